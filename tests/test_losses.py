"""The student's losses against the public code's torch definitions, computed as the public
code computes them: in float32, sigmoid first, then binary_cross_entropy.

That float32 form saturates: once sigmoid(x) rounds to 1 (x above ~16.6), a pixel with target
0 costs log(0) clamped at -100, so its focal loss is 0.8 * 100 = 80 with zero gradient. Our
focal loss works from log-sigmoid and stays exact there; the two agree wherever the public form
has not saturated, and the last test pins the difference where it has."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resam_jax.method.losses import (
    dice_loss,
    focal_loss,
    iou_regression_loss,
    mask_iou,
    masked_mean,
    segmentation_losses,
)


def _torch_focal(logits, targets, alpha=0.8, gamma=2.0):
    probs = torch.clamp(torch.sigmoid(logits), 0, 1).reshape(-1)
    bce = F.binary_cross_entropy(probs, targets.reshape(-1), reduction="none")
    return (alpha * (1 - torch.exp(-bce)) ** gamma * bce).mean()


def _torch_dice(logits, targets, smooth=1.0):
    probs = torch.sigmoid(logits).reshape(-1)
    targets = targets.reshape(-1)
    intersection = (probs * targets).sum()
    return 1 - (2.0 * intersection + smooth) / (probs.sum() + targets.sum() + smooth)


def _torch_calc_iou(masks, targets):
    """The public code's calc_iou: it thresholds whatever it is given at 0.5 (it is given logits)."""
    predicted = (masks >= 0.5).float()
    intersection = (predicted * targets).sum()
    union = predicted.sum() + targets.sum() - intersection
    return intersection / (union + 1e-7)


@pytest.fixture
def instances():
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(3, 16, 16)) * 4).astype(np.float32)
    targets = rng.random((3, 16, 16)) > 0.6
    targets[2] = False  # an empty target
    return logits, targets


def test_focal_dice_iou_match_torch_per_instance(instances):
    logits, targets = instances
    focal = focal_loss(jnp.asarray(logits), jnp.asarray(targets), alpha=0.8, gamma=2.0)
    dice = dice_loss(jnp.asarray(logits), jnp.asarray(targets))
    iou_logits = mask_iou(jnp.asarray(logits), jnp.asarray(targets), "logits")
    iou_probs = mask_iou(jnp.asarray(logits), jnp.asarray(targets), "probs")
    for k in range(len(logits)):
        tl = torch.from_numpy(logits[k])  # float32, as the public code runs
        tt = torch.from_numpy(targets[k].astype(np.float32))
        np.testing.assert_allclose(focal[k], _torch_focal(tl, tt).item(), rtol=1e-4)
        np.testing.assert_allclose(dice[k], _torch_dice(tl, tt).item(), rtol=1e-5)
        np.testing.assert_allclose(iou_logits[k], _torch_calc_iou(tl, tt).item(), rtol=1e-6)
        want_probs = _torch_calc_iou(torch.sigmoid(tl), tt).item()
        np.testing.assert_allclose(iou_probs[k], want_probs, rtol=1e-6)


def test_iou_target_on_logits_differs_from_probs_between_the_two_thresholds():
    # A pixel with logit 0.3 is foreground for sigmoid >= 0.5 but not for logit >= 0.5.
    logits = jnp.asarray([[0.3, 0.3], [2.0, -3.0]])
    targets = jnp.asarray([[True, True], [True, False]])
    np.testing.assert_allclose(mask_iou(logits, targets, "logits"), 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(mask_iou(logits, targets, "probs"), 1.0, rtol=1e-6)


def test_saturated_pixels_are_bounded_by_the_bce_log_floor_like_torch():
    # torch clamps log(p) and log(1 - p) at -100; a wrong pixel with |logit| > 100 costs 100.
    logits = np.array([[-150.0, 150.0]], np.float32)
    targets = np.array([[True, False]])
    got = focal_loss(jnp.asarray(logits), jnp.asarray(targets), alpha=0.8, gamma=2.0)
    want = _torch_focal(torch.from_numpy(logits), torch.from_numpy(targets.astype(np.float32)))
    np.testing.assert_allclose(got, want.item(), rtol=1e-6)
    np.testing.assert_allclose(got, 0.8 * 100.0, rtol=1e-6)


def test_public_float32_focal_saturates_above_logit_16_6_where_ours_stays_exact():
    logits = np.array([[10.0, 17.0, 30.0]], np.float32)  # all wrong: target 0
    torch_logits = torch.from_numpy(logits[0]).requires_grad_()
    bce = F.binary_cross_entropy(torch.sigmoid(torch_logits), torch.zeros(3), reduction="none")
    public = 0.8 * (1 - torch.exp(-bce)) ** 2 * bce  # the public FocalLoss, per pixel
    public.sum().backward()
    ours = jax.vmap(lambda x: focal_loss(x[None, None], jnp.zeros((1, 1), bool), 0.8, 2.0))(
        jnp.asarray(logits[0])
    )
    ours_grad = jax.grad(lambda x: focal_loss(x[None], jnp.zeros((1, 3), bool), 0.8, 2.0).sum())(
        jnp.asarray(logits[0])
    )
    exact = 0.8 * (1 - np.exp(-logits[0].astype(np.float64) - np.log1p(np.exp(-logits[0])))) ** 2 * (
        logits[0] + np.log1p(np.exp(-logits[0].astype(np.float64)))
    )  # fmt: skip
    # Below the saturation both are exact; above it the public loss is stuck at 80, no gradient.
    np.testing.assert_allclose(public[0].item(), exact[0], rtol=1e-4)
    np.testing.assert_allclose(public[1:].detach().numpy(), [80.0, 80.0], rtol=1e-6)
    assert torch_logits.grad[1:].abs().max().item() == 0.0
    np.testing.assert_allclose(ours, exact, rtol=1e-5)
    assert float(jnp.min(ours_grad)) > 0


def test_focal_and_dice_gradients_match_torch(instances):
    logits, targets = instances

    def total(x):
        t = jnp.asarray(targets)
        return jnp.sum(20 * focal_loss(x, t, 0.8, 2.0) + dice_loss(x, t))

    grad = jax.grad(total)(jnp.asarray(logits))
    torch_logits = torch.from_numpy(logits).requires_grad_()  # float32, as the public code
    torch_targets = torch.from_numpy(targets.astype(np.float32))
    torch_total = sum(
        20 * _torch_focal(torch_logits[k], torch_targets[k])
        + _torch_dice(torch_logits[k], torch_targets[k])
        for k in range(len(logits))
    )
    torch_total.backward()
    np.testing.assert_allclose(grad, torch_logits.grad.numpy(), rtol=1e-3, atol=1e-7)


def test_iou_regression_targets_the_actual_iou_without_gradient_into_the_masks(instances):
    logits, targets = instances
    predictions = jnp.asarray([0.2, 0.9, 0.5])
    loss = iou_regression_loss(predictions, jnp.asarray(logits), jnp.asarray(targets), "logits")
    actual = mask_iou(jnp.asarray(logits), jnp.asarray(targets), "logits")
    np.testing.assert_allclose(loss, (predictions - actual) ** 2, rtol=1e-6)
    mask_grad = jax.grad(
        lambda x: iou_regression_loss(predictions, x, jnp.asarray(targets), "logits").sum()
    )(jnp.asarray(logits))
    assert float(jnp.abs(mask_grad).max()) == 0.0


def test_masked_mean_ignores_invalid_entries_even_nan():
    values = jnp.asarray([[1.0, jnp.nan], [3.0, 5.0]])
    valid = jnp.asarray([[True, False], [True, False]])
    np.testing.assert_allclose(masked_mean(values, valid), 2.0)
    assert float(masked_mean(values, jnp.zeros_like(valid))) == 0.0


def test_segmentation_losses_average_over_valid_instances_only(instances):
    logits, targets = instances
    batch_logits = jnp.asarray(logits)[None]
    batch_targets = jnp.asarray(targets)[None]
    iou_predictions = jnp.asarray([[0.1, 0.7, 0.3]])
    valid = jnp.asarray([[True, False, True]])
    losses = segmentation_losses(
        batch_logits, iou_predictions, batch_targets, valid, focal_alpha=0.8, focal_gamma=2.0,
        iou_target_on="logits",
    )  # fmt: skip
    kept = np.array([0, 2])
    np.testing.assert_allclose(
        losses["focal"],
        focal_loss(batch_logits, batch_targets, 0.8, 2.0)[0, kept].mean(),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        losses["dice"], dice_loss(batch_logits, batch_targets)[0, kept].mean(), rtol=1e-6
    )
    np.testing.assert_allclose(
        losses["iou"],
        iou_regression_loss(iou_predictions, batch_logits, batch_targets, "logits")[0, kept].mean(),
        rtol=1e-6,
    )
