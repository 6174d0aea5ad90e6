"""Pretraining a SAM with full supervision, prompted as SAM itself is trained (used by
tools/pretrain_sam.py and tools/pretrain_tiny_sam.py, which make the packaged stand-ins for
Meta's SAM)."""

import jax
import jax.numpy as jnp

from resam_jax.method.losses import segmentation_losses
from resam_jax.models.sam import Sam, decode_masks, normalize_pixels

# The student's loss weights and focal parameters (docs/method.md section 4.3).
FOCAL_ALPHA, FOCAL_GAMMA, FOCAL_WEIGHT = 0.8, 2.0, 20.0

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


def sam_training_loss(model: Sam, batch, key: jax.Array, pixel_norm: str) -> jax.Array:
    """Mean of the point-prompted and the box-prompted 20 focal + dice + IoU-head losses on the
    GT masks (IoU target on probabilities, as SAM's own training), prompts from
    sam_training_prompts."""
    images = normalize_pixels(batch["weak_image"], batch["content_mask"], pixel_norm)
    embedding = model.encode(images)
    point_labels, boxes = sam_training_prompts(key, batch)
    total = 0.0
    for prompts in ({"points": batch["points"], "point_labels": point_labels}, {"boxes": boxes}):
        logits, iou = decode_masks(model, embedding, images.shape[1], **prompts)
        parts = segmentation_losses(
            logits, iou, batch["masks"], batch["instance_valid"], FOCAL_ALPHA, FOCAL_GAMMA,
            iou_target_on="probs",
        )  # fmt: skip
        total += FOCAL_WEIGHT * parts["focal"] + parts["dice"] + parts["iou"]
    return total / 2
