"""A training run, one job a file: setup.py (prepare: model, data and their checks),
evaluator.py (scores and overlays), loop.py (train_and_evaluate), checkpoints.py (orbax state,
preemption, exports), reporting.py (progress, metrics.jsonl, TensorBoard, tables), cli.py (the
flags and exit codes of the run commands).

The names below load on first use, so that the commands parse their flags and set XLA's flags
(cli.run_command) before JAX, TFDS and grain are imported.
"""

import importlib

_EXPORTS = {
    "Evaluator": "resam_jax.run.evaluator",
    "MODES": "resam_jax.run.loop",
    "train_and_evaluate": "resam_jax.run.loop",
    "RunError": "resam_jax.run.setup",
    "build_model": "resam_jax.run.setup",
    "prepare": "resam_jax.run.setup",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
