"""Full-size parity (1024 x 1024) of SAM 2.1 against `sam2` 1.1.0's SAM2ImagePredictor: a random
Hiera-t (and, slow, b+) checkpoint saved as Meta saves it, converted by the CLI, loaded, and
compared on the predictor's features and on its predictions (points, box, box + click, mask
input, several boxes at once), with the dynamic single-mask fallback of build_sam2's default.

Bounds as for SAM: image embedding and high-res features max abs diff <= 1e-4, low-res logits
(clamped to +-32 as the predictor returns them) <= 2e-5, IoU <= 1e-6; the measured values are
printed (pytest -s).
"""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from sam2_reference import randomize_, released_model  # noqa: E402

from resam_jax.models.sam2.checkpoint import load_sam2  # noqa: E402
from weights_convert.convert_sam2 import main as convert_main  # noqa: E402

HEIGHT, WIDTH = 600, 800
PROMPTS = {
    "points-multimask": dict(
        point_coords=np.array([[310.0, 205.0], [120.0, 400.0]]),
        point_labels=np.array([1, 0]),
        multimask_output=True,
    ),
    "box": dict(box=np.array([200.0, 150.0, 420.0, 330.0]), multimask_output=False),
    "points+box": dict(
        point_coords=np.array([[300.0, 240.0]]),
        point_labels=np.array([1]),
        box=np.array([200.0, 150.0, 420.0, 330.0]),
        multimask_output=False,
    ),
    "boxes-batched": dict(
        box=np.array([[200.0, 150.0, 420.0, 330.0], [20.0, 30.0, 700.0, 500.0]]),
        multimask_output=False,
    ),
}


def smooth_image(seed=0):
    """Smooth colour fields plus texture, so the masks have structure."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH] / max(HEIGHT, WIDTH)
    channels = [
        np.sin(6 * x * rng.uniform(0.5, 2) + 4 * y * rng.uniform(0.5, 2) + rng.uniform(0, 6))
        for _ in range(3)
    ]
    image = 127 + 90 * np.stack(channels, -1) + rng.normal(0, 12, (HEIGHT, WIDTH, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def converted(model_type: str, seed: int, root):
    """(reference SAM2ImagePredictor with the image set, our model, the encoder's input)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    reference = released_model(model_type)  # build_sam2: eval mode, apply_postprocessing
    randomize_(reference, seed)
    torch.save({"model": reference.state_dict()}, root / "sam2.pt")
    assert (
        convert_main(["--checkpoint", str(root / "sam2.pt"), "--output", str(root / "ckpt")]) == 0
    )
    predictor = SAM2ImagePredictor(reference)
    image = smooth_image()
    predictor.set_image(image)
    pixels = predictor._transforms(image)[None].permute(0, 2, 3, 1).numpy()
    return predictor, load_sam2(root / "ckpt"), pixels


def our_predict(model, features, point_coords=None, point_labels=None, box=None, mask_input=None,
                multimask_output=True):  # fmt: skip
    """SAM2ImagePredictor.predict's arithmetic on our model (coordinates scaled per axis)."""
    scale = np.array([1024 / WIDTH, 1024 / HEIGHT], np.float32)
    points = labels = boxes = None
    if point_coords is not None:
        points = jnp.asarray(point_coords[None] * scale, jnp.float32)
        labels = jnp.asarray(point_labels[None], jnp.int32)
    if box is not None:
        boxes = jnp.asarray(box.reshape(-1, 2, 2) * scale, jnp.float32).reshape(-1, 4)
    sparse, dense = model.embed_prompts(points, labels, boxes, mask_input)
    low_res, iou, _, _ = model.decode(
        features, sparse, dense, multimask_output=multimask_output, dynamic_multimask=True
    )
    return np.clip(np.asarray(low_res), -32, 32), np.asarray(iou)


def compare(predictor, model, pixels, label):
    features = nnx.jit(lambda model, pixels: model.encode(pixels))(model, jnp.asarray(pixels))
    expected = predictor._features
    diffs = {
        "image_embed": np.abs(
            np.asarray(features["image_embed"][0])
            - expected["image_embed"][0].permute(1, 2, 0).numpy()
        ).max()
    }
    for i, (ours, theirs) in enumerate(zip(features["high_res_feats"], expected["high_res_feats"])):
        diffs[f"high_res_{i}"] = np.abs(
            np.asarray(ours[0]) - theirs[0].permute(1, 2, 0).numpy()
        ).max()
    print(f"{label}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= 1e-4

    for name, kwargs in PROMPTS.items():
        _, iou, low_res = predictor.predict(return_logits=True, **kwargs)
        if low_res.ndim == 3:  # one prompt set: the predictor drops the batch axis
            low_res, iou = low_res[None], iou[None]
        actual_low_res, actual_iou = our_predict(model, features, **kwargs)
        assert actual_low_res.shape == low_res.shape
        logit_diff = np.abs(actual_low_res - low_res).max()
        iou_diff = np.abs(actual_iou - iou).max()
        unsaturated = (np.abs(low_res) < 32).mean()
        print(f"{label} {name}: low-res logits {logit_diff:.2e} ({100 * unsaturated:.0f}% "
              f"unsaturated), IoU {iou_diff:.2e}")  # fmt: skip
        assert logit_diff <= 2e-5 and iou_diff <= 1e-6
        assert unsaturated > 0.05, "degenerate test: logits all clamped"

    # A mask prompt: the previous low-res logits fed back (the dense path).
    _, _, previous = predictor.predict(**PROMPTS["points-multimask"], return_logits=True)
    prompt = dict(point_coords=np.array([[310.0, 205.0]]), point_labels=np.array([1]))
    _, iou, low_res = predictor.predict(
        **prompt, mask_input=previous[:1], multimask_output=False, return_logits=True
    )
    actual_low_res, actual_iou = our_predict(
        model, features, **prompt, mask_input=jnp.asarray(previous[:1]), multimask_output=False
    )
    print(f"{label} mask-input: low-res logits {np.abs(actual_low_res[0] - low_res).max():.2e}")
    assert np.abs(actual_low_res[0] - low_res).max() <= 2e-5
    assert np.abs(actual_iou[0] - iou).max() <= 1e-6


def test_hiera_t(tmp_path):
    compare(*converted("hiera_t", seed=21, root=tmp_path), "hiera_t")


@pytest.mark.slow
def test_hiera_b_plus(tmp_path):
    compare(*converted("hiera_b+", seed=22, root=tmp_path), "hiera_b+")


def test_hiera_t_predictor(tmp_path):
    """Our Sam2ImagePredictor against SAM2ImagePredictor at full size: its own preprocessing
    (the 600 x 800 image stretched to 1024), prompts in original pixels, the masks upsampled to
    600 x 800 (identical but for pixels whose logit is within float rounding of 0)."""
    from resam_jax.inference.predictor_sam2 import Sam2ImagePredictor

    theirs, model, _ = converted("hiera_t", seed=23, root=tmp_path)
    ours = Sam2ImagePredictor(model)
    ours.set_image(smooth_image())
    embed = np.abs(
        np.asarray(ours.get_image_embedding()[0])
        - theirs.get_image_embedding()[0].permute(1, 2, 0).numpy()
    ).max()
    print(f"hiera_t predictor: image_embed {embed:.2e}")
    assert embed <= 1e-4
    for name, kwargs in PROMPTS.items():
        masks, iou, low_res = theirs.predict(**kwargs)
        logits = theirs.predict(**kwargs, return_logits=True)[0]
        actual = ours.predict(**kwargs)
        flipped = actual[0] != masks
        near_zero = np.abs(logits[flipped]).max() if flipped.any() else 0.0
        logit_diff = np.abs(actual[2] - low_res).max()
        print(f"hiera_t predictor {name}: low-res logits {logit_diff:.2e}, IoU "
              f"{np.abs(actual[1] - iou).max():.2e}, {flipped.sum()} mask pixels differ "
              f"(|logit| <= {near_zero:.1e})")  # fmt: skip
        assert actual[0].shape == masks.shape == (*logits.shape[:-2], HEIGHT, WIDTH)
        assert logit_diff <= 2e-5 and np.abs(actual[1] - iou).max() <= 1e-6
        assert near_zero < 1e-4
        full = ours.predict(**kwargs, return_logits=True)[0]
        assert np.abs(full - logits).max() <= 2e-5
