"""Metrics against a straightforward NumPy implementation of the definitions (docs/method.md section 5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resam_jax.method.metrics import ImageAveragedScores, binarize, confusion_counts, image_scores


def _score(numerator, denominator):
    return numerator / denominator if denominator else 1.0  # smp's zero_division=1.0


def _numpy_scores(tp, fp, fn):
    return {
        "iou": _score(tp, tp + fp + fn),
        "f1": _score(2 * tp, 2 * tp + fp + fn),
        "precision": _score(tp, tp + fp),
        "recall": _score(tp, tp + fn),
    }


def _numpy_pooled(pred, gt):
    """smp micro-imagewise with the image's instances as one image: sum counts, then score."""
    tp = int(np.sum(pred & gt))
    fp = int(np.sum(pred & ~gt))
    fn = int(np.sum(~pred & gt))
    return _numpy_scores(tp, fp, fn)


def _numpy_per_instance(pred, gt):
    """What smp computes when handed an [N, H, W] stack: each instance scored, then averaged."""
    per_instance = [_numpy_pooled(p[None], g[None]) for p, g in zip(pred, gt, strict=True)]
    return {name: np.mean([s[name] for s in per_instance]) for name in per_instance[0]}


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 5, 12, 12)).astype(np.float32) * 2
    gt = rng.random((4, 5, 12, 12)) > 0.7
    valid = rng.random((4, 5)) > 0.3
    valid[0] = True
    valid[1] = [True, False, False, False, False]
    gt[1, 0] = False  # an empty GT with an empty prediction: every score 1 by zero division
    logits[1, 0] = -5
    valid[3] = False  # e.g. batch padding: no score
    return logits, gt, valid


@pytest.mark.parametrize("threshold_on", ["logits", "probs"])
@pytest.mark.parametrize("reduction", ["pooled", "per_instance"])
def test_scores_match_numpy_definitions(batch, threshold_on, reduction):
    logits, gt, valid = batch
    predicted = binarize(jnp.asarray(logits), threshold_on)
    counts = confusion_counts(predicted, jnp.asarray(gt), jnp.asarray(valid))
    scores, has_instances = image_scores(np.asarray(counts), valid, reduction)
    np.testing.assert_array_equal(has_instances, [True, True, True, False])

    threshold = 0.5 if threshold_on == "logits" else 0.0  # sigmoid(x) >= 0.5 <=> x >= 0
    pred = logits >= threshold
    reference = _numpy_pooled if reduction == "pooled" else _numpy_per_instance
    for b in range(3):
        want = reference(pred[b][valid[b]], gt[b][valid[b]])
        for name, value in want.items():
            np.testing.assert_allclose(scores[name][b], value, rtol=1e-12, err_msg=name)
    assert all(scores[name][1] == 1.0 for name in scores)


def test_logit_threshold_is_half_not_zero():
    predicted = binarize(jnp.asarray([0.0, 0.49, 0.5, 0.6]), "logits")
    np.testing.assert_array_equal(predicted, [False, False, True, True])
    predicted = binarize(jnp.asarray([-0.1, 0.0, 0.49]), "probs")
    np.testing.assert_array_equal(predicted, [False, True, True])


def test_counts_cover_every_pixel_and_zero_invalid_instances(batch):
    logits, gt, valid = batch
    counts = np.asarray(
        confusion_counts(jnp.asarray(logits) > 0, jnp.asarray(gt), jnp.asarray(valid))
    )
    np.testing.assert_array_equal(counts.sum(-1), np.where(valid, 12 * 12, 0))


def test_accumulator_averages_over_images_with_instances(batch):
    logits, gt, valid = batch
    counts = np.asarray(
        confusion_counts(
            binarize(jnp.asarray(logits), "logits"), jnp.asarray(gt), jnp.asarray(valid)
        )
    )
    accumulator = ImageAveragedScores("pooled")
    image_ids = np.arange(len(counts))
    accumulator.update(counts[:2], valid[:2], image_ids[:2])
    accumulator.update(counts[2:], valid[2:], image_ids[2:])
    scores, _ = image_scores(counts, valid, "pooled")
    result = accumulator.result()
    assert accumulator.num_images == 3
    for name in ("iou", "f1", "precision", "recall"):
        np.testing.assert_allclose(result[name], scores[name][:3].mean())


@pytest.mark.parametrize("reduction", ["pooled", "per_instance"])
def test_samples_of_one_image_are_scored_as_one_image(batch, reduction):
    """An image split into chunks of instances is scored once over all its instances, and
    padding samples (image_id -1) are ignored."""
    logits, gt, valid = batch
    counts = np.asarray(
        confusion_counts(
            binarize(jnp.asarray(logits), "logits"), jnp.asarray(gt), jnp.asarray(valid)
        )
    )
    whole = np.concatenate([counts[0][valid[0]], counts[1][valid[1]]])[None]
    expected, _ = image_scores(whole, np.ones(whole.shape[:2], bool), reduction)
    accumulator = ImageAveragedScores(reduction)
    accumulator.update(counts[:2], valid[:2], np.array([7, 7]))
    accumulator.update(counts[2:3], valid[2:3], np.array([-1]))
    assert accumulator.num_images == 1
    for name, value in accumulator.result().items():
        np.testing.assert_allclose(value, expected[name][0])


def test_empty_accumulator_is_an_error():
    with pytest.raises(ValueError, match="no image"):
        ImageAveragedScores("pooled").result()


@pytest.mark.parametrize("prompt", ["points", "boxes"])
def test_eval_step_counts_match_the_reference_sam(prompt):
    """The eval step's confusion counts against an independent computation: Meta's
    segment-anything carrying the same weights (sam_reference.torch_twin), fed [0, 1] pixels
    zeroed in the padding, single-mask decode, bilinear upsampling, logits >= 0.5, counts in
    NumPy."""
    import torch
    from sam_reference import public_forward, torch_twin
    from test_train_step import make_batch, make_config, make_model

    from resam_jax.method.eval_step import make_eval_step
    from resam_jax.method.train_state import split_model

    model = make_model()
    graphdef, lora, frozen = split_model(model)
    config = make_config()
    config.eval.prompt = prompt
    batch = make_batch(0)
    with jax.default_matmul_precision("float32"):
        out = jax.jit(make_eval_step(graphdef, config))(lora, frozen, batch)

    reference = torch_twin(model).eval()
    pixels = batch["weak_image"] / np.float32(255.0) * batch["content_mask"][..., None]
    images = torch.from_numpy(pixels.astype(np.float32)).permute(0, 3, 1, 2)
    logits = []
    with torch.no_grad():
        for b in range(len(images)):
            if prompt == "points":
                query = (
                    torch.from_numpy(batch["points"][b]),
                    torch.from_numpy(batch["point_labels"][b]),
                )
            else:
                query = torch.from_numpy(batch["boxes"][b])
            logits.append(public_forward(reference, images[b : b + 1], query)[1].numpy())
    pred = np.stack(logits) >= 0.5
    gt, valid = batch["masks"], batch["instance_valid"]
    want = np.stack(
        [(pred & gt).sum((2, 3)), (pred & ~gt).sum((2, 3)), (~pred & gt).sum((2, 3)), (~pred & ~gt).sum((2, 3))],
        axis=-1,
    ) * valid[..., None]  # fmt: skip
    # Pixels whose logit sits within float noise of the threshold may flip: allow a handful.
    np.testing.assert_allclose(out["counts"], want, atol=3)
    np.testing.assert_array_equal(out["instance_valid"], valid)
    assert want[valid][:, 0].sum() > 100  # real predictions, not two empty masks
