"""SAM's training recipe in pretraining (resam_jax/experiments/pretraining.py): clicks from the
error region, the three-mask minimum-loss round, and the recipe record of tools/pretrain_sam."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resam_jax.experiments import pretraining
from resam_jax.experiments.pretraining import Recipe, error_region_clicks, sam_training_loss
from resam_jax.method.losses import segmentation_losses
from resam_jax.models.sam import Sam, decode_masks, normalize_pixels, sam_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools import pretrain_sam  # noqa: E402


def test_clicks_fall_in_the_error_region_with_its_label():
    size = 16
    masks = np.zeros((1, 3, size, size), bool)
    masks[0, 0, 4:8, 4:8] = True  # missed entirely: a positive click inside it
    masks[0, 1, 2:6, 2:6] = True  # predicted exactly: no click
    logits = np.full((1, 3, size, size), -5.0, np.float32)
    logits[0, 1, 2:6, 2:6] = 5.0
    logits[0, 2, 10:12, 0:3] = 5.0  # spills where there is no object: a negative click
    content = np.ones((1, size, size), bool)
    content[0, :, 2] = False  # the spill's column 2 is padding: never clicked
    for seed in range(20):
        points, labels = error_region_clicks(
            jax.random.key(seed), jnp.asarray(logits), jnp.asarray(masks), jnp.asarray(content)
        )
        points, labels = np.asarray(points)[0, :, 0], np.asarray(labels)[0, :, 0]
        assert labels.tolist() == [1, -1, 0]
        x, y = points[0].astype(int)
        assert masks[0, 0, y, x]
        x, y = points[2].astype(int)
        assert 10 <= y < 12 and x in (0, 1)


def test_clicks_are_uniform_over_the_error_region():
    size = 8
    masks = jnp.zeros((1, 1, size, size), bool).at[0, 0, :, :4].set(True)
    logits = jnp.full((1, 1, size, size), -1.0)
    content = jnp.ones((1, size, size), bool)
    keys = jax.random.split(jax.random.key(0), 4000)
    points, _ = jax.vmap(lambda k: error_region_clicks(k, logits, masks, content))(keys)
    xs = np.asarray(points)[:, 0, 0, 0, 0].astype(int)
    counts = np.bincount(xs, minlength=size)
    assert counts[4:].sum() == 0
    np.testing.assert_allclose(counts[:4] / len(xs), 0.25, atol=0.03)


def _model_and_batch():
    config = sam_config("tiny", image_size=64)
    model = Sam(config, rngs=nnx.Rngs(0), pixel_norm="unit")
    rng = np.random.default_rng(0)
    b, n, p, s = 2, 3, 3, 64
    masks = np.zeros((b, n, s, s), bool)
    for i in range(b):
        for j in range(n):
            y, x = rng.integers(4, 40, 2)
            masks[i, j, y : y + 16, x : x + 12] = True
    points = rng.uniform(0, s, (b, n, 2 * p, 2)).astype(np.float32)
    batch = {
        "weak_image": rng.uniform(0, 1, (b, s, s, 3)).astype(np.float32),
        "content_mask": np.ones((b, s, s), bool),
        "masks": masks,
        "instance_valid": np.array([[True, True, False], [True, True, True]]),
        "points": points,
        "point_labels": np.tile(np.array([1] * p + [0] * p, np.int32), (b, n, 1)),
        "boxes": np.tile(np.array([4.0, 4.0, 30.0, 30.0], np.float32), (b, n, 1)),
    }
    return model, jax.tree.map(jnp.asarray, batch)


def _jitted_loss(model, recipe=pretraining.BASE_RECIPE):
    graphdef, state = nnx.split(model)
    return jax.jit(
        lambda state, batch, key: sam_training_loss(
            nnx.merge(graphdef, state), batch, key, "unit", recipe
        )
    ), state


def test_multimask_round_trains_the_lowest_loss_mask(monkeypatch):
    model, batch = _model_and_batch()
    loss_fn, state = _jitted_loss(model, Recipe(correction_clicks=1, multimask=True))
    loss = float(loss_fn(state, batch, jax.random.key(0)))
    # The same loss with the first of the three masks trained instead of the lowest-loss one is
    # larger (the minimum is never above any of them, and random masks differ).
    monkeypatch.setattr(pretraining.jnp, "argmin", lambda x, axis: jnp.zeros(x.shape[:-1], int))
    loss_fn, state = _jitted_loss(model, Recipe(correction_clicks=1, multimask=True))
    first_mask = float(loss_fn(state, batch, jax.random.key(0)))
    assert np.isfinite(loss) and loss < first_mask


def test_correction_rounds_add_decodes_to_the_loss():
    """(Their gradients train: test_a_run_records_which_recipe_trained_which_steps.)"""
    model, batch = _model_and_batch()
    key = jax.random.key(1)
    base_fn, state = _jitted_loss(model)
    clicks_fn, state = _jitted_loss(model, Recipe(correction_clicks=2))
    base, with_clicks = float(base_fn(state, batch, key)), float(clicks_fn(state, batch, key))
    assert np.isfinite(with_clicks) and abs(with_clicks - base) > 1e-3 * base


def test_the_bce_recipe_trains_cross_entropy_and_dice_in_every_round():
    model, batch = _model_and_batch()
    key = jax.random.key(2)
    bce_fn, state = _jitted_loss(model, Recipe(mask_loss="bce"))
    got = float(bce_fn(state, batch, key))
    # The base decodes restated: BCE (weight 1) + dice + the IoU head, for points and box.
    images = normalize_pixels(batch["weak_image"], batch["content_mask"], "unit")
    embedding = model.encode(images)
    labels, boxes = pretraining.sam_training_prompts(key, batch)
    total = 0.0
    for prompts in ({"points": batch["points"], "point_labels": labels}, {"boxes": boxes}):
        logits, iou = decode_masks(model, embedding, images.shape[1], **prompts)
        parts = segmentation_losses(
            logits, iou, batch["masks"], batch["instance_valid"], pretraining.FOCAL_ALPHA,
            pretraining.FOCAL_GAMMA, iou_target_on="probs", mask_loss="bce",
        )  # fmt: skip
        total += float(parts["bce"] + parts["dice"] + parts["iou"])
    np.testing.assert_allclose(got, total / 2, rtol=1e-5)
    # The correction rounds and the three-mask round train it too.
    for recipe in (Recipe(correction_clicks=1), Recipe(correction_clicks=1, multimask=True)):
        focal_fn, _ = _jitted_loss(model, recipe)
        bce_fn, _ = _jitted_loss(model, Recipe(**{**recipe.__dict__, "mask_loss": "bce"}))
        focal, bce = float(focal_fn(state, batch, key)), float(bce_fn(state, batch, key))
        assert np.isfinite(bce) and abs(bce - focal) > 1e-2 * focal, recipe


def test_recipe_validation():
    with pytest.raises(ValueError, match="multimask needs"):
        Recipe(multimask=True)
    with pytest.raises(ValueError, match=">= 0"):
        Recipe(correction_clicks=-1)
    with pytest.raises(ValueError, match="mask_loss='l2'"):
        Recipe(mask_loss="l2")


def test_a_run_records_which_recipe_trained_which_steps(synthetic_data, tmp_path):
    _, data_dir = synthetic_data
    common = [
        "--dataset", "coco_instances", "--dataset-config", "resam_demo",
        "--data-dir", str(data_dir), "--source-half", "first", "--model-type", "tiny",
        "--image-size", "64", "--max-instances", "4", "--batch-size", "2", "--steps", "3",
        "--eval-split", "", "--log-every", "1", "--resume-dir", str(tmp_path / "ckpt"),
    ]  # fmt: skip
    first = pretrain_sam.run(pretrain_sam._parser().parse_args([*common, "--stop-after", "2"]))
    second = pretrain_sam.run(
        pretrain_sam._parser().parse_args(
            [
                *common,
                "--correction-clicks",
                "1",
                "--multimask",
                "--mask-loss",
                "bce",
                "--output",
                str(tmp_path / "sam"),
            ]
        )
    )
    assert first["step"] == 2 and second["step"] == 3
    assert all(np.isfinite(second["losses"]))
    header = json.loads((tmp_path / "sam" / "sam_checkpoint.json").read_text())
    assert header["source"]["recipes"] == [
        {
            "first_step": 0,
            "last_step": 2,
            "correction_clicks": 0,
            "multimask": False,
            "mask_loss": "focal",
        },
        {
            "first_step": 2,
            "last_step": 3,
            "correction_clicks": 1,
            "multimask": True,
            "mask_loss": "bce",
        },
    ]
    with pytest.raises(SystemExit, match="multimask needs"):
        pretrain_sam.run(pretrain_sam._parser().parse_args([*common, "--multimask"]))
