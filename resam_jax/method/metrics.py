"""Evaluation metrics (docs/method.md section 5): confusion counts on device, scores on the host.

The device computes tp/fp/fn/tn per (image, instance) at the padded S x S resolution; the host
turns them into per-image IoU, F1, precision and recall and averages over images.

Two per-image reductions (docs/method.md section 5):
    "per_instance"   what every published number uses (the default): the public code hands smp
                     `get_stats(mode="binary")` + "micro-imagewise" an [N, H, W] stack, which smp
                     reads as N "images" of H "classes", so every instance is scored on its own
                     and the scores are averaged over the image's instances.
    "pooled"         the counts of all the image's instances are summed first, then scored (what
                     "micro-imagewise" means for one [H, W] image; weights large objects more).
Division by zero scores 1, as smp's score functions do by default.
"""

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

ThresholdOn = Literal["logits", "probs"]
Reduction = Literal["per_instance", "pooled"]
REDUCTIONS = ("per_instance", "pooled")

# smp.metrics.get_stats(..., threshold=0.5) keeps values >= 0.5.
_THRESHOLD = 0.5
SCORE_NAMES = ("iou", "f1", "precision", "recall")


def binarize(logits: jax.Array, threshold_on: ThresholdOn) -> jax.Array:
    """Predicted masks: logits >= 0.5 (public code) or sigmoid(logits) >= 0.5."""
    if threshold_on == "logits":
        return logits >= _THRESHOLD
    if threshold_on == "probs":
        return jax.nn.sigmoid(logits) >= _THRESHOLD
    raise ValueError(f"unknown threshold_on {threshold_on!r}; expected 'logits' or 'probs'")


def confusion_counts(predicted: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """Per-instance pixel counts.

    Args:
        predicted, target: bool [B, N, H, W].
        valid: bool [B, N]; invalid instances get all-zero counts.

    Returns:
        int32 [B, N, 4] holding (tp, fp, fn, tn).
    """

    def count(pixels):
        return jnp.sum(pixels, axis=(-2, -1), dtype=jnp.int32)

    tp = count(predicted & target)
    fp = count(predicted) - tp
    fn = count(target) - tp
    tn = predicted.shape[-2] * predicted.shape[-1] - tp - fp - fn
    return jnp.stack([tp, fp, fn, tn], axis=-1) * valid[..., None]


def instance_iou(predicted: jax.Array, target: jax.Array) -> jax.Array:
    """On device: IoU of bool masks [..., H, W] per instance [...] (0/0 scores 1, as smp)."""
    intersection = jnp.sum(predicted & target, axis=(-2, -1), dtype=jnp.float32)
    union = jnp.sum(predicted | target, axis=(-2, -1), dtype=jnp.float32)
    return jnp.where(union > 0, intersection / jnp.maximum(union, 1.0), 1.0)


def masked_mean_iou(predicted: jax.Array, target: jax.Array, valid: jax.Array) -> jax.Array:
    """On device: instance_iou of bool masks [B, N, H, W] averaged over the valid instances
    [B, N]; 0 when none is valid. For logging pseudo-label quality."""
    iou = instance_iou(predicted, target)
    return jnp.sum(jnp.where(valid, iou, 0.0)) / jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), 1.0)


def scores_from_counts(counts: np.ndarray) -> dict[str, np.ndarray]:
    """IoU, F1, precision and recall from (tp, fp, fn, tn) counts [..., 4]."""
    tp, fp, fn, _ = (counts[..., k].astype(np.float64) for k in range(4))
    return {
        "iou": _ratio(tp, tp + fp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
    }


def image_scores(
    counts: np.ndarray, valid: np.ndarray, reduction: Reduction
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-image scores.

    Args:
        counts: [B, N, 4] from confusion_counts.
        valid: bool [B, N].
        reduction: "per_instance" or "pooled" (module docstring).

    Returns:
        (scores {name: float64 [B]}, has_instances bool [B]); images without a valid instance
        (e.g. batch padding) have no defined score and must be left out of averages.
    """
    counts = np.asarray(counts)
    valid = np.asarray(valid, bool)
    num_valid = valid.sum(axis=1)
    if reduction == "pooled":
        scores = scores_from_counts((counts * valid[..., None]).sum(axis=1))
    elif reduction == "per_instance":
        scores = {
            name: (value * valid).sum(axis=1) / np.maximum(num_valid, 1)
            for name, value in scores_from_counts(counts).items()
        }
    else:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}")
    return scores, num_valid > 0


class ImageAveragedScores:
    """Host-side accumulator: per-image scores averaged over the images seen.

    An image with more instances than a sample holds arrives as several samples sharing its
    image_id; its instances are gathered and the image is scored once. image_id < 0 marks the
    empty samples that pad the last evaluation batch.
    """

    def __init__(self, reduction: Reduction):
        self.reduction = reduction
        self._instances: dict[int, list[np.ndarray]] = {}

    def update(self, counts: np.ndarray, valid: np.ndarray, image_ids: np.ndarray) -> None:
        """counts [B, N, 4], valid bool [B, N], image_ids int [B] of one evaluation batch."""
        valid = np.asarray(valid, bool)
        for image_id, sample_counts, sample_valid in zip(
            np.asarray(image_ids), np.asarray(counts), valid, strict=True
        ):
            if image_id >= 0 and sample_valid.any():
                self._instances.setdefault(int(image_id), []).append(sample_counts[sample_valid])

    @property
    def num_images(self) -> int:
        return len(self._instances)

    def result(self) -> dict[str, float]:
        if not self._instances:
            raise ValueError("no image with a valid instance was evaluated")
        totals = dict.fromkeys(SCORE_NAMES, 0.0)
        for chunks in self._instances.values():
            instances = np.concatenate(chunks)[None]  # one image: [1, n, 4]
            scores, _ = image_scores(instances, np.ones(instances.shape[:2], bool), self.reduction)
            for name in SCORE_NAMES:
                totals[name] += float(scores[name][0])
        return {name: total / self.num_images for name, total in totals.items()}
