"""Requery: re-prompt the teacher with the tight boxes of the refined masks.

Instances whose refined mask is empty become invalid but keep their slot, so student
predictions and pseudo-labels stay aligned (the public code drops them from one list only).
"""

import jax
import jax.numpy as jnp


def _first_true(flags: jax.Array) -> jax.Array:
    return jnp.argmax(flags, axis=-1)


def _last_true(flags: jax.Array) -> jax.Array:
    return flags.shape[-1] - 1 - jnp.argmax(flags[..., ::-1], axis=-1)


def mask_boxes(masks: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Tight boxes of binary masks, computed without data-dependent shapes.

    Args:
        masks: bool [..., H, W].

    Returns:
        (boxes float32 [..., 4] as [xmin, ymin, xmax, ymax] in inclusive pixel indices, as the
         public code's torch.where(...).min()/max(); zeros for an empty mask,
         nonempty bool [...]).
    """
    columns = jnp.any(masks, axis=-2)  # [..., W]
    rows = jnp.any(masks, axis=-1)  # [..., H]
    nonempty = jnp.any(columns, axis=-1)
    boxes = jnp.stack(
        [_first_true(columns), _first_true(rows), _last_true(columns), _last_true(rows)], axis=-1
    )
    boxes = jnp.where(nonempty[..., None], boxes, 0).astype(jnp.float32)
    return boxes, nonempty


def requery_prompts(
    refined_masks: jax.Array, instance_valid: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Box prompts for the second teacher pass and the instances that remain valid.

    Args:
        refined_masks: bool [B, N, H, W] from refine_masks.
        instance_valid: bool [B, N].

    Returns:
        (boxes float32 [B, N, 4], valid bool [B, N] = instance_valid & refined mask not empty).
    """
    boxes, nonempty = mask_boxes(refined_masks)
    return boxes, instance_valid & nonempty


def pseudo_labels(requery_logits: jax.Array) -> jax.Array:
    """Binary pseudo-labels from the box-prompted teacher logits (logit > 0, i.e. p > 0.5)."""
    return requery_logits > 0
