"""A training run, one job a file: setup.py (model and data), evaluator.py (scores and
overlays), loop.py (train_and_evaluate), checkpoints.py (orbax state, preemption, exports),
reporting.py (progress, metrics.jsonl, TensorBoard, tables)."""

from resam_jax.run.evaluator import Evaluator
from resam_jax.run.loop import MODES, train_and_evaluate
from resam_jax.run.setup import RunError, build_model

__all__ = ["MODES", "Evaluator", "RunError", "build_model", "train_and_evaluate"]
