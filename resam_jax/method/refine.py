"""Refine: keep the pixels the teacher is confident about, then drop contested pixels.

All functions work on batched, padded instances [B, N, ...] with a validity mask, so one
compilation serves every batch.
"""

import math
from typing import Literal

import jax
import jax.numpy as jnp

EntropyUnit = Literal["nats", "bits"]

# The public code clamps probabilities before the entropy so that log() stays finite.
_PROB_CLAMP = 1e-6


def entropy_confidence(logits: jax.Array, entropy_unit: EntropyUnit = "nats") -> jax.Array:
    """p * (1 - H(p)) per pixel, with H the binary entropy in nats (public master branch, not
    normalised) or in bits (camera branch: H / ln 2, in [0, 1])."""
    p = jnp.clip(jax.nn.sigmoid(logits.astype(jnp.float32)), _PROB_CLAMP, 1.0 - _PROB_CLAMP)
    entropy = -(p * jnp.log(p) + (1.0 - p) * jnp.log1p(-p))
    if entropy_unit == "bits":
        entropy = entropy / math.log(2.0)
    elif entropy_unit != "nats":
        raise ValueError(f"unknown entropy unit {entropy_unit!r}; expected 'nats' or 'bits'")
    return p * (1.0 - entropy)


def remove_overlaps(masks: jax.Array, instance_valid: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Removes every pixel claimed by two or more valid instances of the same image.

    Args:
        masks: bool [B, N, H, W].
        instance_valid: bool [B, N]; invalid slots neither claim pixels nor keep any.

    Returns:
        (masks without contested pixels, bool [B, N, H, W];
         removed fraction, float32 [B]: removed instance-pixels / claimed instance-pixels, 0 if none)
    """
    masks = masks & instance_valid[:, :, None, None]
    claims = jnp.sum(masks, axis=1, dtype=jnp.int32)  # [B, H, W]
    contested = claims > 1
    kept = masks & ~contested[:, None]
    claimed = jnp.sum(claims, axis=(1, 2))
    removed = claimed - jnp.sum(kept, axis=(1, 2, 3), dtype=jnp.int32)
    removed_fraction = jnp.where(claimed > 0, removed / jnp.maximum(claimed, 1), 0.0)
    return kept, removed_fraction.astype(jnp.float32)


def refine_masks(
    logits: jax.Array,
    instance_valid: jax.Array,
    threshold: float,
    entropy_unit: EntropyUnit = "nats",
) -> tuple[jax.Array, jax.Array]:
    """Refine stage: confident pixels (p * (1 - H) > threshold) without overlaps.

    Args:
        logits: teacher's single-mask logits upsampled to the input frame, [B, N, H, W].
        instance_valid: bool [B, N].
        threshold: confidence threshold (0.3 in the paper and the public master branch, with H
            in nats; 0.5 in the camera branch, with H in bits).
        entropy_unit: see entropy_confidence.

    Returns:
        (refined masks bool [B, N, H, W], removed overlap fraction float32 [B]); see remove_overlaps.
    """
    confident = entropy_confidence(logits, entropy_unit) > threshold
    return remove_overlaps(confident, instance_valid)
