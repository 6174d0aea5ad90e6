"""Pretraining a SAM with full supervision, prompted as SAM itself is trained (used by
tools/pretrain_sam.py and tools/pretrain_tiny_sam.py, which make the packaged stand-ins for
Meta's SAM).

The base recipe decodes each instance twice (a random set of points, a jittered GT box). A
`Recipe` adds the two parts of SAM's own training (Kirillov et al. 2023, appendix A) one at a
time:
- correction clicks: after the first decode, `correction_clicks` more rounds, each adding one
  point drawn uniformly from the error region of the previous mask (positive where the mask
  misses the object, negative where it spills over) and feeding the previous round's low-res
  logits back as the mask prompt; every round's mask is trained;
- multimask: the point round starts from ONE positive point, decoded into SAM's three
  ambiguity-aware masks of which only the one with the lowest loss is trained (the IoU head on
  all three); the correction rounds then train the single-mask output that several points use.

and one change of loss: `mask_loss="bce"` trains every decode with per-pixel binary cross-entropy
+ dice (MedSAM's loss, BCE_WEIGHT 1) instead of SAM's 20 focal + dice. The focal term stops
pushing a pixel once it is classified (p ~ 0.8), which leaves the interior of objects at
probabilities that ReSAM's Refine (p (1 - H) > 0.3, H in nats: p > ~0.73) finds unconfident;
cross-entropy goes on raising them.
"""

import dataclasses

import jax
import jax.numpy as jnp

from resam_jax.method.losses import instance_losses, masked_mean, segmentation_losses
from resam_jax.models.sam import Sam, decode_masks, normalize_pixels, upsample_logits

# The student's loss weights and focal parameters (docs/method.md section 4.3).
FOCAL_ALPHA, FOCAL_GAMMA, FOCAL_WEIGHT = 0.8, 2.0, 20.0
BCE_WEIGHT = 1.0
MASK_WEIGHTS = {"focal": FOCAL_WEIGHT, "bce": BCE_WEIGHT}

# GT boxes are jittered by this fraction of their side, as SAM's training does; it also teaches
# the model boxes that are not tight (Requery prompts with boxes of imperfect refined masks).
BOX_JITTER = 0.1


def sam_training_prompts(key: jax.Array, batch) -> tuple[jax.Array, jax.Array]:
    """Point labels keeping 1..P positives and 0..P negatives per instance (the rest become
    padding, -1), and GT boxes jittered by BOX_JITTER of their side."""
    labels = batch["point_labels"]
    b, n, two_p = labels.shape
    p = two_p // 2
    pos_key, neg_key, box_key = jax.random.split(key, 3)
    keep_pos = jax.random.randint(pos_key, (b, n, 1), 1, p + 1)
    keep_neg = jax.random.randint(neg_key, (b, n, 1), 0, p + 1)
    slot = jnp.arange(p)
    keep = jnp.concatenate([slot < keep_pos, slot < keep_neg], axis=-1)
    boxes = batch["boxes"]
    side = jnp.concatenate([boxes[..., 2:] - boxes[..., :2]] * 2, axis=-1)
    jitter = BOX_JITTER * side * jax.random.normal(box_key, boxes.shape)
    size = batch["weak_image"].shape[1]
    return jnp.where(keep, labels, -1), jnp.clip(boxes + jitter, 0, size - 1)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a pretraining step trains beyond the base recipe (module docstring)."""

    correction_clicks: int = 0
    multimask: bool = False
    mask_loss: str = "focal"

    @property
    def interactive(self) -> bool:
        return self.correction_clicks > 0 or self.multimask

    def __post_init__(self):
        if self.mask_loss not in MASK_WEIGHTS:
            raise ValueError(f"mask_loss={self.mask_loss!r}; expected one of {list(MASK_WEIGHTS)}")
        if self.correction_clicks < 0:
            raise ValueError(f"correction_clicks={self.correction_clicks}; expected >= 0")
        if self.multimask and self.correction_clicks < 1:
            # Without a correction round nothing would train the single-mask output that a
            # 1 + 1 point prompt (the evaluation's) decodes with.
            raise ValueError("multimask needs correction_clicks >= 1")


BASE_RECIPE = Recipe()


def _weighted_loss(parts: dict, recipe: Recipe) -> jax.Array:
    return MASK_WEIGHTS[recipe.mask_loss] * parts[recipe.mask_loss] + parts["dice"] + parts["iou"]


def _losses(logits, iou, masks, valid, recipe: Recipe) -> dict:
    """The mask term of `recipe`, dice and the IoU head's loss (IoU target on probabilities,
    as SAM's own training) over the valid instances."""
    return segmentation_losses(
        logits, iou, masks, valid, FOCAL_ALPHA, FOCAL_GAMMA, iou_target_on="probs",
        mask_loss=recipe.mask_loss,
    )  # fmt: skip


def error_region_clicks(
    key: jax.Array, logits: jax.Array, masks: jax.Array, content: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One click per instance, uniform over the error region of `logits` > 0 against `masks`
    (both [B, N, S, S]) inside the image content [B, S, S]: points [B, N, 1, 2] as (x, y) pixel
    indices, labels [B, N, 1] (1 on a missed object pixel, 0 on a spilled one, -1 when the mask
    is already exact)."""
    predicted = logits > 0
    error = (predicted != masks) & content[:, None]
    noise = jax.random.uniform(key, error.shape)
    flat = jnp.where(error, noise, -1.0).reshape(*error.shape[:2], -1)
    index = jnp.argmax(flat, axis=-1)
    size = error.shape[-1]
    points = jnp.stack([index % size, index // size], axis=-1).astype(jnp.float32)
    missed = jnp.take_along_axis(masks.reshape(flat.shape), index[..., None], axis=-1)[..., 0]
    labels = jnp.where(jnp.any(error, axis=(-2, -1)), missed.astype(jnp.int32), -1)
    return points[:, :, None], labels[:, :, None]


def _multimask_round(model, embedding, size, points, labels, masks, valid, recipe):
    """SAM's ambiguity-aware first round: three masks from one positive point, the lowest-loss
    one trained (the IoU head on all three). Returns (loss, the best-scored mask's low-res
    logits and its upsampled logits)."""
    low, iou = model.decode(embedding, points=points, point_labels=labels, multimask_output=True)
    logits = upsample_logits(low, size)  # [B, N, 3, S, S]
    per_mask = instance_losses(
        logits, iou, masks[:, :, None], FOCAL_ALPHA, FOCAL_GAMMA, iou_target_on="probs",
        mask_loss=recipe.mask_loss,
    )  # fmt: skip
    mask_terms = MASK_WEIGHTS[recipe.mask_loss] * per_mask[recipe.mask_loss] + per_mask["dice"]
    best = jnp.argmin(mask_terms, axis=-1)
    trained = jnp.take_along_axis(mask_terms, best[..., None], axis=-1)[..., 0]
    loss = masked_mean(trained + jnp.mean(per_mask["iou"], axis=-1), valid)
    pick = jnp.argmax(iou, axis=-1)[..., None, None, None]  # as a user picks: by predicted IoU
    chosen_low = jnp.take_along_axis(low, pick, axis=2)[:, :, 0]
    chosen = jnp.take_along_axis(logits, pick, axis=2)[:, :, 0]
    return loss, chosen_low, chosen


def sam_training_loss(
    model: Sam, batch, key: jax.Array, pixel_norm: str, recipe: Recipe = BASE_RECIPE
) -> jax.Array:
    """Mean over every decode of the mask term (20 focal, or `recipe`'s) + dice + IoU-head
    losses on the GT masks (IoU target on probabilities, as SAM's own training): the point- and
    the box-prompted decodes of sam_training_prompts, then `recipe`'s rounds."""
    images = normalize_pixels(batch["weak_image"], batch["content_mask"], pixel_norm)
    embedding = model.encode(images)
    point_labels, boxes = sam_training_prompts(key, batch)
    if recipe.interactive:
        click_key = jax.random.fold_in(key, 1)
        return _interactive_loss(model, embedding, batch, click_key, point_labels, boxes, recipe)
    total = 0.0
    for prompts in ({"points": batch["points"], "point_labels": point_labels}, {"boxes": boxes}):
        logits, iou = decode_masks(model, embedding, images.shape[1], **prompts)
        total += _weighted_loss(
            _losses(logits, iou, batch["masks"], batch["instance_valid"], recipe), recipe
        )
    return total / 2


def _interactive_loss(model, embedding, batch, key, point_labels, boxes, recipe: Recipe):
    """sam_training_loss with correction clicks (and the multimask first round): each of the two
    prompt kinds runs 1 + recipe.correction_clicks rounds; the loss is the mean over all."""
    size = batch["weak_image"].shape[1]
    masks, valid, content = batch["masks"], batch["instance_valid"], batch["content_mask"]
    p = point_labels.shape[-1] // 2
    if recipe.multimask:  # the first positive point alone
        point_labels = jnp.where(jnp.arange(2 * p) == 0, point_labels, -1)
    starts = (
        {"points": batch["points"], "point_labels": point_labels},
        {"boxes": boxes, "points": batch["points"][:, :, :0], "point_labels": point_labels[..., :0]},
    )  # fmt: skip
    losses = []
    for start, start_key in zip(starts, jax.random.split(key, len(starts))):
        prompts = dict(start)
        if recipe.multimask and "boxes" not in prompts:
            loss, low, logits = _multimask_round(
                model, embedding, size, prompts["points"], prompts["point_labels"], masks, valid,
                recipe,
            )  # fmt: skip
        else:
            low, iou = model.decode(embedding, **_non_empty(prompts), multimask_output=False)
            low, iou = low[:, :, 0], iou[:, :, 0]
            logits = upsample_logits(low, size)
            loss = _weighted_loss(_losses(logits, iou, masks, valid, recipe), recipe)
        losses.append(loss)
        for click_key in jax.random.split(start_key, recipe.correction_clicks):
            points, labels = error_region_clicks(
                click_key, jax.lax.stop_gradient(logits), masks, content
            )
            prompts["points"] = jnp.concatenate([prompts["points"], points], axis=2)
            prompts["point_labels"] = jnp.concatenate([prompts["point_labels"], labels], axis=2)
            prompts["mask_inputs"] = jax.lax.stop_gradient(low)
            low, iou = model.decode(embedding, **prompts, multimask_output=False)
            low, iou = low[:, :, 0], iou[:, :, 0]
            logits = upsample_logits(low, size)
            losses.append(_weighted_loss(_losses(logits, iou, masks, valid, recipe), recipe))
    return sum(losses) / len(losses)


def _non_empty(prompts: dict) -> dict:
    """The prompts without a zero-length point set (a box-only first round)."""
    if prompts.get("points") is not None and prompts["points"].shape[2] == 0:
        return {k: v for k, v in prompts.items() if k not in ("points", "point_labels")}
    return prompts
