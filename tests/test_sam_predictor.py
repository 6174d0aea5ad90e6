"""SamPredictor port against segment_anything.SamPredictor on the tiny config, and the predict CLI."""

import numpy as np
import pytest
from data_fixtures import run_module
from PIL import Image
from sam_reference import assert_same_prediction, converted_reference
from segment_anything import SamPredictor as TorchPredictor

from resam_jax.inference.predictor import SamPredictor
from resam_jax.models.sam import sam_config

TINY = sam_config("tiny")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor")
    reference, _, _ = converted_reference(TINY, 41, root)
    image = np.random.default_rng(0).integers(0, 256, size=(150, 230, 3), dtype=np.uint8)
    return reference, root, image


@pytest.fixture(scope="module")
def predictors(setup):
    from resam_jax.models.sam import load_sam

    reference, root, image = setup
    torch_predictor, jax_predictor = (
        TorchPredictor(reference),
        SamPredictor(load_sam(root / "ckpt")),
    )
    torch_predictor.set_image(image)
    jax_predictor.set_image(image)
    return torch_predictor, jax_predictor


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(point_coords=np.array([[40.0, 60.0], [200.0, 20.0]]), point_labels=np.array([1, 0])),
        dict(box=np.array([20.0, 30.0, 150.0, 120.0]), multimask_output=False),
        dict(point_coords=np.array([[80.0, 70.0]]), point_labels=np.array([1]), return_logits=True),
    ],
    ids=["points", "box", "logits"],
)
def test_matches_reference(predictors, kwargs):
    torch_predictor, jax_predictor = predictors
    expected = torch_predictor.predict(**kwargs)
    actual = jax_predictor.predict(**kwargs)
    if kwargs.get("return_logits"):
        np.testing.assert_allclose(actual[0], expected[0], atol=1e-3)
        expected, actual = (expected[0] > 0, *expected[1:]), (actual[0] > 0, *actual[1:])
    assert_same_prediction(expected, actual)


def test_mask_input_refinement_matches_reference(predictors):
    torch_predictor, jax_predictor = predictors
    first = torch_predictor.predict(
        point_coords=np.array([[40.0, 60.0]]), point_labels=np.array([1])
    )
    mask_input = first[2][np.argmax(first[1])][None]
    kwargs = dict(
        point_coords=np.array([[40.0, 60.0]]),
        point_labels=np.array([1]),
        mask_input=mask_input,
        multimask_output=False,
    )
    assert_same_prediction(torch_predictor.predict(**kwargs), jax_predictor.predict(**kwargs))


def test_bgr_input_is_flipped_to_rgb(setup, predictors):
    _, jax_predictor = predictors
    _, root, image = setup
    from resam_jax.models.sam import load_sam

    bgr = SamPredictor(load_sam(root / "ckpt"))
    bgr.set_image(np.ascontiguousarray(image[..., ::-1]), image_format="BGR")
    np.testing.assert_array_equal(bgr.get_image_embedding(), jax_predictor.get_image_embedding())


def test_predict_before_set_image_is_an_error(setup):
    from resam_jax.models.sam import load_sam

    with pytest.raises(RuntimeError, match="set_image"):
        SamPredictor(load_sam(setup[1] / "ckpt")).predict(box=np.array([0, 0, 5, 5]))


def run_predict(*args):
    return run_module("resam_jax.predict", *args)


def test_cli_writes_npz_and_overlay(setup, tmp_path):
    _, root, image = setup
    Image.fromarray(image).save(tmp_path / "in.png")
    code, output = run_predict(
        "--checkpoint", root / "ckpt", "--image", tmp_path / "in.png", "--point", "40,60,1",
        "--box", "20,30,150,120", "--output", tmp_path / "out.npz", "--overlay", tmp_path / "o.png",
    )  # fmt: skip
    assert code == 0, output
    saved = np.load(tmp_path / "out.npz")
    assert saved["masks"].shape == (1, 150, 230) and saved["masks"].dtype == np.bool_
    assert saved["iou_predictions"].dtype == np.float32 and saved["low_res_logits"].shape == (
        1,
        64,
        64,
    )
    overlay = np.asarray(Image.open(tmp_path / "o.png"))
    assert overlay.shape == image.shape and not np.array_equal(overlay, image)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--image", "{tmp}/missing.png", "--point", "1,1,1"], "missing.png does not exist"),
        (["--image", "{tmp}/broken.png", "--point", "1,1,1"], "cannot decode image"),
        (
            ["--image", "{tmp}/in.png", "--point", "1,1"],
            "--point must be 3 comma-separated numbers",
        ),
        (["--image", "{tmp}/in.png", "--point", "1,1,2"], "label must be 1 (object) or 0"),
        (["--image", "{tmp}/in.png", "--box", "9,9,1,1"], "X0<=X1"),
        (["--image", "{tmp}/in.png"], "at least one --point or a --box"),
        (
            ["--image", "{tmp}/in.png", "--point", "1,1,1", "--checkpoint", "{tmp}"],
            "is not a converted SAM checkpoint",
        ),
        (
            ["--image", "{tmp}/in.png", "--point", "5000,-20,1"],
            "--point 5000,-20,1: (5000, -20) lies outside the image",
        ),
        (
            ["--image", "{tmp}/in.png", "--box", "10,10,240,100"],
            "--box 10,10,240,100: corner (240, 100) lies outside the image",
        ),
    ],
    ids=[
        "missing-image",
        "corrupt-image",
        "short-point",
        "bad-label",
        "inverted-box",
        "no-prompt",
        "no-checkpoint",
        "point-outside",
        "box-outside",
    ],
)
def test_cli_errors_are_clear(setup, tmp_path, args, message):
    _, root, image = setup
    Image.fromarray(image).save(tmp_path / "in.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    args = [a.format(tmp=tmp_path) for a in args]
    if "--checkpoint" not in args:
        args = ["--checkpoint", str(root / "ckpt"), *args]
    code, output = run_predict(*args, "--output", tmp_path / "out.npz")
    assert code == 2 and "Traceback" not in output, output
    assert message in output, output
    assert not (tmp_path / "out.npz").exists()
