"""Segmentation losses of the student, per instance, as in the public ReSAM/WeSAM code (focal:
master branch; BCE: camera branch).

All per-instance functions take logits [..., H, W] and binary targets [..., H, W] and return
one value per instance [...]; `masked_mean` averages them over the valid instances only.
"""

from typing import Literal

import jax
import jax.numpy as jnp

from resam_jax.method.metrics import ThresholdOn, binarize

# torch.nn.functional.binary_cross_entropy clamps its log terms at -100.
_BCE_LOG_FLOOR = -100.0
# Epsilon of the public code's calc_iou.
_IOU_EPS = 1e-7


MaskLoss = Literal["focal", "bce"]


def _pixel_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-pixel binary cross-entropy of sigmoid(logits), its log terms floored as torch's are."""
    logits = logits.astype(jnp.float32)
    targets = targets.astype(jnp.float32)
    log_p = jnp.maximum(jax.nn.log_sigmoid(logits), _BCE_LOG_FLOOR)
    log_not_p = jnp.maximum(jax.nn.log_sigmoid(-logits), _BCE_LOG_FLOOR)
    return -(targets * log_p + (1.0 - targets) * log_not_p)


def focal_loss(logits: jax.Array, targets: jax.Array, alpha: float, gamma: float) -> jax.Array:
    """Pixel mean of alpha * (1 - exp(-BCE))^gamma * BCE, BCE on sigmoid probabilities."""
    bce = _pixel_bce(logits, targets)
    return jnp.mean(alpha * (1.0 - jnp.exp(-bce)) ** gamma * bce, axis=(-2, -1))


def bce_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Pixel mean of the binary cross-entropy on sigmoid probabilities (the camera branch's
    BCELossSimple; like focal_loss, it differs from it only where float32 sigmoid saturates)."""
    return jnp.mean(_pixel_bce(logits, targets), axis=(-2, -1))


def dice_loss(logits: jax.Array, targets: jax.Array, smooth: float = 1.0) -> jax.Array:
    """1 - (2 |p t| + smooth) / (|p| + |t| + smooth), p = sigmoid(logits)."""
    probs = jax.nn.sigmoid(logits.astype(jnp.float32))
    targets = targets.astype(jnp.float32)
    intersection = jnp.sum(probs * targets, axis=(-2, -1))
    total = jnp.sum(probs, axis=(-2, -1)) + jnp.sum(targets, axis=(-2, -1))
    return 1.0 - (2.0 * intersection + smooth) / (total + smooth)


def mask_iou(logits: jax.Array, targets: jax.Array, threshold_on: ThresholdOn) -> jax.Array:
    """IoU of the predicted mask against the targets; the IoU head's regression target.

    The public code's calc_iou thresholds the LOGITS at 0.5 (threshold_on="logits", i.e.
    sigmoid >= 0.62); "probs" thresholds sigmoid(logits) at 0.5.
    """
    predicted = binarize(logits, threshold_on)
    targets = targets.astype(bool)
    intersection = jnp.sum(predicted & targets, axis=(-2, -1), dtype=jnp.float32)
    union = jnp.sum(predicted | targets, axis=(-2, -1), dtype=jnp.float32)
    return intersection / (union + _IOU_EPS)


def iou_regression_loss(
    iou_predictions: jax.Array, logits: jax.Array, targets: jax.Array, threshold_on: ThresholdOn
) -> jax.Array:
    """Squared error between the IoU head and the actual IoU of the predicted mask."""
    actual = jax.lax.stop_gradient(mask_iou(logits, targets, threshold_on))
    return (iou_predictions.astype(jnp.float32) - actual) ** 2


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean over the valid entries; 0 when there are none; a NaN in an invalid entry
    does not leak into the result."""
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return total / jnp.maximum(jnp.sum(valid, dtype=values.dtype), 1.0)


def instance_losses(
    logits: jax.Array,
    iou_predictions: jax.Array,
    targets: jax.Array,
    focal_alpha: float,
    focal_gamma: float,
    iou_target_on: ThresholdOn,
    mask_loss: MaskLoss = "focal",
) -> dict[str, jax.Array]:
    """The mask term (focal or bce), dice and IoU-regression losses of every instance [...]
    (segmentation_losses' arguments, without `valid`)."""
    if mask_loss == "focal":
        pixel_term = focal_loss(logits, targets, focal_alpha, focal_gamma)
    elif mask_loss == "bce":
        pixel_term = bce_loss(logits, targets)
    else:
        raise ValueError(f"unknown mask loss {mask_loss!r}; expected 'focal' or 'bce'")
    return {
        mask_loss: pixel_term,
        "dice": dice_loss(logits, targets),
        "iou": iou_regression_loss(iou_predictions, logits, targets, iou_target_on),
    }


def segmentation_losses(
    logits: jax.Array,
    iou_predictions: jax.Array,
    targets: jax.Array,
    valid: jax.Array,
    focal_alpha: float,
    focal_gamma: float,
    iou_target_on: ThresholdOn,
    mask_loss: MaskLoss = "focal",
) -> dict[str, jax.Array]:
    """The mask term ("focal" or "bce", keyed by its name), dice and IoU-regression losses
    averaged over the valid instances.

    Args:
        logits: student logits in the input frame [B, N, H, W].
        iou_predictions: student IoU head [B, N].
        targets: bool [B, N, H, W] pseudo-labels (or GT masks in supervised mode).
        valid: bool [B, N].
        iou_target_on: how the IoU head's target binarises the logits (see mask_iou).
    """
    losses = instance_losses(
        logits, iou_predictions, targets, focal_alpha, focal_gamma, iou_target_on, mask_loss
    )
    return {name: masked_mean(values, valid) for name, values in losses.items()}
