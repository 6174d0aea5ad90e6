"""Evaluation step (docs/method.md section 5): prompt the model with the GT points or boxes of
every instance, binarise at the padded S x S resolution and count tp/fp/fn/tn per instance.

The host turns the counts into per-image scores with resam_jax.method.metrics.ImageAveragedScores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import ml_collections
from flax import nnx

from resam_jax.method.metrics import binarize, confusion_counts
from resam_jax.models import Backbone

Batch = Mapping[str, jax.Array]
PROMPTS = ("points", "boxes")


def batch_prompts(batch: Batch, prompt: str) -> dict[str, jax.Array]:
    """The decode prompts of a batch: its points and labels, or its GT boxes."""
    if prompt == "points":
        return {"points": batch["points"], "point_labels": batch["point_labels"]}
    if prompt == "boxes":
        return {"boxes": batch["boxes"]}
    raise ValueError(f"unknown prompt {prompt!r}; expected one of {PROMPTS}")


def predict_logits(model: Backbone, batch: Batch, prompt: str) -> jax.Array:
    """Mask logits [B, N, S, S] of every instance of the weak (unaugmented-colour) view."""
    embedding = model.encode_pixels(batch["weak_image"], batch["content_mask"])
    return model.decode_masks(embedding, batch_prompts(batch, prompt))[0]


def make_eval_step(
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict
) -> Callable[[nnx.State, nnx.State, Batch], dict[str, jax.Array]]:
    """A pure `(lora, frozen, batch) -> {"counts": int32 [B, N, 4], "instance_valid": [B, N],
    "image_id": [B]}` (the image ids let the host join the samples of one image).

    `lora` is whichever LoRA set to evaluate: the student's (TrainState.lora), or the initial
    one (B = 0) for Direct SAM. Reads config.eval.{prompt, threshold_on}.
    """
    prompt = config.eval.prompt
    threshold_on = config.eval.threshold_on
    if prompt not in PROMPTS:
        raise ValueError(f"eval.prompt={prompt!r}; expected one of {PROMPTS}")

    def eval_step(lora: nnx.State, frozen: nnx.State, batch: Batch) -> dict[str, jax.Array]:
        model = nnx.merge(graphdef, lora, frozen)
        predicted = binarize(predict_logits(model, batch, prompt), threshold_on)
        counts = confusion_counts(predicted, batch["masks"], batch["instance_valid"])
        return {
            "counts": counts,
            "instance_valid": batch["instance_valid"],
            "image_id": batch["image_id"],
        }

    return eval_step
