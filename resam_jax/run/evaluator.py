"""Evaluation during a run: scores over K prompt draws, and overlay PNGs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import jax
import ml_collections
import numpy as np
from flax import nnx

from resam_jax import parallel
from resam_jax.data import pipeline
from resam_jax.method.eval_step import batch_prompts, make_eval_step, predict_logits
from resam_jax.method.metrics import SCORE_NAMES, ImageAveragedScores, binarize
from resam_jax.method.pseudo_labels import teacher_pseudo_labels
from resam_jax.run import reporting
from resam_jax.run.setup import RunError


def make_overlay_step(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict):
    """Jitted (student_lora, teacher_lora, frozen, batch) -> the prediction, pseudo-label and
    its validity for drawing: the eval prompts on the student, Refine + Requery on the teacher."""
    prompt = config.eval.prompt

    def overlay_step(student_lora, teacher_lora, frozen, batch):
        logits = predict_logits(nnx.merge(graphdef, student_lora, frozen), batch, prompt)
        pseudo = teacher_pseudo_labels(
            nnx.merge(graphdef, teacher_lora, frozen),
            batch["weak_image"],
            batch["content_mask"],
            batch_prompts(batch, "points"),
            batch["instance_valid"],
            config.method.refine_threshold,
            refine_entropy=config.method.refine_entropy,
        )
        return {
            "prediction": binarize(logits, config.eval.threshold_on),
            "pseudo_label": pseudo.masks if config.method.requery else pseudo.refined,
            "pseudo_valid": pseudo.valid,
        }

    return overlay_step


class Evaluator:
    """Scores a LoRA set on the evaluation split and draws a few overlays.

    Point prompts are random draws: the published numbers come from one draw that no other
    implementation can replay, so every evaluation is repeated over config.eval.prompt_seeds
    draws (seeds config.seed, config.seed + 1, ...) and reports the mean and the standard
    deviation over them (`<score>_std`, 0 for a single draw). Box prompts do not depend on the
    seed and are scored once.
    """

    def __init__(self, graphdef, config, data_config, mesh, workdir: Path):
        rep, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
        self._eval_step = jax.jit(
            make_eval_step(graphdef, config), in_shardings=(rep, rep, sharded), out_shardings=rep
        )
        self._overlay_step = jax.jit(
            make_overlay_step(graphdef, config),
            in_shardings=(rep, rep, rep, sharded),
            out_shardings=rep,
        )
        self._config = config
        self.set_data(data_config)
        self._mesh = mesh
        self._reduction = config.eval.reduction
        self._num_overlays = config.train.num_overlays
        self._workdir = workdir

    def set_data(self, data_config: pipeline.DataConfig) -> None:
        """Evaluates on data made with `data_config` from now on (the compiled steps stay)."""
        config = self._config
        num_draws = config.eval.prompt_seeds if config.eval.prompt == "points" else 1
        if num_draws < 1:
            raise RunError(f"config.eval.prompt_seeds={config.eval.prompt_seeds}; expected >= 1")
        self._datasets = [
            pipeline.make_dataset(
                data_config, config.data.eval_split, train=False, seed=config.seed + draw
            )
            for draw in range(num_draws)
        ]

    def _batches(
        self, draw: int = 0
    ) -> Iterable[tuple[dict[str, np.ndarray], dict[str, jax.Array]]]:
        for local in self._datasets[draw]:
            yield local, parallel.global_batch(local, self._mesh)

    def scores(self, lora, frozen) -> dict[str, float]:
        """{score: mean over prompt draws, score_std: their standard deviation (ddof 1),
        "images", "prompt_seeds"}."""
        draws = []
        for draw in range(len(self._datasets)):
            scores = ImageAveragedScores(self._reduction)
            for _, batch in self._batches(draw):
                out = self._eval_step(lora, frozen, batch)
                scores.update(out["counts"], out["instance_valid"], out["image_id"])
            draws.append(scores.result())
        summary: dict[str, float] = {}
        for name in SCORE_NAMES:
            values = np.array([d[name] for d in draws])
            summary[name] = float(values.mean())
            summary[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return {**summary, "images": scores.num_images, "prompt_seeds": len(draws)}

    def overlays(self, step: int, student_lora, teacher_lora, frozen) -> None:
        """PNGs of the first `num_overlays` evaluation images of process 0 (its rows come first
        in the global batch: the mesh orders devices by process)."""
        drawn = 0
        for local, batch in self._batches():
            if drawn >= self._num_overlays:
                break
            out = self._overlay_step(student_lora, teacher_lora, frozen, batch)
            keep = slice(0, min(len(local["image_id"]), self._num_overlays - drawn))
            out = {name: np.asarray(value)[keep] for name, value in out.items()}
            if jax.process_index() == 0:
                reporting.write_overlays(
                    self._workdir / "overlays" / f"step_{step}",
                    local["weak_image"][keep],
                    local["image_id"][keep],
                    {
                        "ground truth": (local["masks"][keep], local["instance_valid"][keep]),
                        "prediction": (out["prediction"], local["instance_valid"][keep]),
                        "pseudo-label": (out["pseudo_label"], out["pseudo_valid"]),
                    },
                )
            drawn += keep.stop
