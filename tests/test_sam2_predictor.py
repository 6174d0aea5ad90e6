"""Sam2ImagePredictor against `sam2` 1.1.0's SAM2ImagePredictor on the `hiera_test` configuration
(256 x 256 input; the reference's hard-coded feature sizes are set to match) with every tensor
randomised: images that shrink (antialiased resize) and grow, points, box, box + click, several
boxes at once, mask input, multimask, return_logits, normalize_coords=False; and the predict CLI
on a converted SAM 2 checkpoint.

Bounds as for SAM: image embedding and high-res features 1e-4, low-res logits 2e-5, IoU 1e-6;
final masks identical except pixels whose logit is within float rounding of 0.
"""

import json
import shutil

import numpy as np
import pytest
from data_fixtures import run_module
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from sam2_reference import build_reference, numpy_state_dict  # noqa: E402

from resam_jax.inference.predictor_sam2 import Sam2ImagePredictor, prepare_image  # noqa: E402
from resam_jax.models.sam2 import normalize_pixels, sam2_config  # noqa: E402
from resam_jax.models.sam2.checkpoint import load_sam2, save_sam2_params  # noqa: E402
from resam_jax.models.sam2.params import torch_to_flax  # noqa: E402

CONFIG = sam2_config("hiera_test")
SIZES = {"shrink": (300, 410), "grow": (150, 230)}
ROUNDING = 1e-4  # |logit| below this may flip its sign between implementations


def _prompts(height, width):
    return {
        "points-multimask": dict(
            point_coords=np.array([[0.4 * width, 0.3 * height], [0.8 * width, 0.7 * height]]),
            point_labels=np.array([1, 0]),
        ),
        "box": dict(
            box=np.array([0.2 * width, 0.25 * height, 0.6 * width, 0.7 * height]),
            multimask_output=False,
        ),
        "points+box": dict(
            point_coords=np.array([[0.4 * width, 0.45 * height]]),
            point_labels=np.array([1]),
            box=np.array([0.2 * width, 0.25 * height, 0.6 * width, 0.7 * height]),
            multimask_output=False,
            return_logits=True,
        ),
        "boxes-batched": dict(
            box=np.array(
                [
                    [0.2 * width, 0.25 * height, 0.6 * width, 0.7 * height],
                    [10.0, 12.0, 0.9 * width, 0.8 * height],
                ]
            ),
            multimask_output=False,
        ),  # fmt: skip
        "normalized": dict(
            point_coords=np.array([[0.25, 0.6]]),
            point_labels=np.array([1]),
            normalize_coords=False,
            return_logits=True,
        ),
    }


def smooth_image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [
        np.sin(6 * x * rng.uniform(0.5, 2) + 4 * y * rng.uniform(0.5, 2) + rng.uniform(0, 6))
        for _ in range(3)
    ]
    image = 127 + 90 * np.stack(channels, -1) + rng.normal(0, 12, (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("sam2_predictor")
    reference = build_reference(CONFIG, seed=31)
    params, _, unknown = torch_to_flax(numpy_state_dict(reference))
    assert not unknown, unknown
    save_sam2_params(root / "ckpt", params, CONFIG, {"path": "random hiera_test"})
    return reference, root / "ckpt"


def reference_predictor(reference):
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(reference)
    e = CONFIG.image_size // 16
    predictor._bb_feat_sizes = [(4 * e, 4 * e), (2 * e, 2 * e), (e, e)]  # 1024 hard-coded
    return predictor


@pytest.fixture(scope="module")
def predictors(checkpoint):
    reference, directory = checkpoint
    return reference_predictor(reference), Sam2ImagePredictor(load_sam2(directory))


def assert_same_masks(ours, theirs, logits, thresholded=True):
    if thresholded:
        differ = ours != theirs
        assert not differ.any() or np.abs(logits[differ]).max() < ROUNDING, differ.sum()
    else:
        np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(300, 410), (150, 230), (1500, 700), (600, 800)])
def test_preprocessing_matches_sam2_transforms(shape):
    """The stretch to a square (antialiased when shrinking) and the ImageNet normalisation."""
    from sam2.utils.transforms import SAM2Transforms

    size = 256 if max(shape) < 1000 else 1024
    image = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    expected = SAM2Transforms(size, 0.0)(image).permute(1, 2, 0).numpy()
    actual = np.asarray(normalize_pixels(prepare_image(image, size)))
    assert np.abs(actual - expected).max() < 1e-5, np.abs(actual - expected).max()


@pytest.mark.parametrize("size", list(SIZES), ids=list(SIZES))
def test_matches_sam2_image_predictor(predictors, size):
    theirs, ours = predictors
    height, width = SIZES[size]
    image = smooth_image(height, width)
    theirs.set_image(image)
    ours.set_image(image)
    expected = theirs._features
    diffs = {
        "image_embed": np.abs(
            np.asarray(ours.features["image_embed"][0])
            - expected["image_embed"][0].permute(1, 2, 0).numpy()
        ).max()
    }
    for i, (a, b) in enumerate(zip(ours.features["high_res_feats"], expected["high_res_feats"])):
        diffs[f"high_res_{i}"] = np.abs(np.asarray(a[0]) - b[0].permute(1, 2, 0).numpy()).max()
    print(f"{size}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= 1e-4

    for name, kwargs in _prompts(height, width).items():
        masks, iou, low_res = theirs.predict(**kwargs)
        logits = theirs.predict(**{**kwargs, "return_logits": True})[0]
        actual = ours.predict(**kwargs)
        assert actual[0].shape == masks.shape and actual[0].dtype == masks.dtype, name
        logit_diff = np.abs(actual[2] - low_res).max()
        iou_diff = np.abs(actual[1] - iou).max()
        print(f"{size} {name}: low-res logits {logit_diff:.2e}, IoU {iou_diff:.2e}, "
              f"{(np.abs(low_res) < 32).mean():.0%} unsaturated")  # fmt: skip
        assert logit_diff <= 2e-5 and iou_diff <= 1e-6, name
        assert_same_masks(actual[0], masks, logits, not kwargs.get("return_logits"))

    # The previous low-res logits fed back as a mask prompt.
    kwargs = dict(point_coords=np.array([[0.4 * width, 0.3 * height]]), point_labels=np.array([1]))
    _, scores, previous = theirs.predict(**kwargs)
    kwargs.update(mask_input=previous[np.argmax(scores)][None], multimask_output=False)
    masks, iou, low_res = theirs.predict(**kwargs)
    logits = theirs.predict(**kwargs, return_logits=True)[0]
    actual = ours.predict(**kwargs)
    print(f"{size} mask-input: low-res logits {np.abs(actual[2] - low_res).max():.2e}")
    assert np.abs(actual[2] - low_res).max() <= 2e-5 and np.abs(actual[1] - iou).max() <= 1e-6
    assert_same_masks(actual[0], masks, logits)


def test_float_and_pil_input(predictors):
    _, ours = predictors
    image = smooth_image(*SIZES["grow"])
    ours.set_image(image)
    embedding = np.asarray(ours.get_image_embedding())
    ours.set_image(Image.fromarray(image))
    np.testing.assert_array_equal(np.asarray(ours.get_image_embedding()), embedding)
    ours.set_image(image.astype(np.float32) / 255)
    np.testing.assert_allclose(np.asarray(ours.get_image_embedding()), embedding, atol=1e-5)
    ours.reset_predictor()
    with pytest.raises(RuntimeError):
        ours.predict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([1]))


def test_predict_cli_takes_a_sam2_checkpoint(checkpoint, predictors, tmp_path):
    theirs, _ = predictors
    directory = checkpoint[1]
    assert json.loads((directory / "sam_checkpoint.json").read_text())["format"] == (
        "resam-jax/sam2/1"
    )
    image = smooth_image(*SIZES["shrink"], seed=3)
    Image.fromarray(image).save(tmp_path / "x.png")
    out = tmp_path / "out.npz"
    code, output = run_module(
        "resam_jax.predict",
        "--checkpoint", str(directory), "--image", str(tmp_path / "x.png"),
        "--point", "120,90,1", "--box", "60,50,250,200", "--output", str(out),
    )  # fmt: skip
    assert code == 0, output
    assert "1 mask(s) of 300x410" in output
    theirs.set_image(image)
    kwargs = dict(
        point_coords=np.array([[120.0, 90.0]]),
        point_labels=np.array([1]),
        box=np.array([60.0, 50.0, 250.0, 200.0]),
        multimask_output=False,
    )
    masks, iou, low_res = theirs.predict(**kwargs)
    logits = theirs.predict(**kwargs, return_logits=True)[0]
    with np.load(out) as saved:
        assert np.abs(saved["low_res_logits"] - low_res).max() <= 2e-5
        assert np.abs(saved["iou_predictions"] - iou).max() <= 1e-6
        assert saved["masks"].dtype == bool
        assert_same_masks(saved["masks"].astype(np.float32), masks, logits)


def damage_params(directory):
    for item in (directory / "params").iterdir():
        if item.is_file():
            item.write_bytes(b"damaged")


def bad_config_field(directory):
    header = json.loads((directory / "sam_checkpoint.json").read_text())
    header["config"]["attention"] = "flash"
    (directory / "sam_checkpoint.json").write_text(json.dumps(header))


@pytest.mark.parametrize(
    "damage,message",
    [
        (damage_params, "cannot read parameters under {ckpt}/params"),
        (bad_config_field, "{ckpt}/sam_checkpoint.json: bad field 'config': Sam2Config.attention"),
    ],
    ids=["params", "config"],
)
def test_predict_cli_names_what_is_wrong_with_a_sam2_checkpoint(
    checkpoint, tmp_path, damage, message
):
    """A damaged SAM 2 checkpoint is one `error:` line naming the file and the field, exit 2."""
    ckpt = tmp_path / "ckpt"
    shutil.copytree(checkpoint[1], ckpt)
    damage(ckpt)
    Image.fromarray(smooth_image(*SIZES["shrink"], seed=3)).save(tmp_path / "x.png")
    code, output = run_module(
        "resam_jax.predict",
        "--checkpoint", str(ckpt), "--image", str(tmp_path / "x.png"), "--point", "120,90,1",
        "--output", str(tmp_path / "out.npz"),
    )  # fmt: skip
    assert code == 2 and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message.format(ckpt=ckpt) in errors[0], output
    assert not (tmp_path / "out.npz").exists()
