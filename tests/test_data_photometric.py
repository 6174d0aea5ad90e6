"""The strong view's photometric augmentations against albumentations' definitions."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from resam_jax.data import photometric


def _image(seed: int = 0, shape=(40, 50, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_posterize_keeps_the_four_high_bits():
    image = _image()
    np.testing.assert_array_equal(photometric.posterize(image, bits=4), image & 0xF0)


def test_solarize_inverts_from_the_threshold_up():
    image = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    out = photometric.solarize(image, threshold=128).astype(int)
    values = image.astype(int)
    np.testing.assert_array_equal(out, np.where(values >= 128, 255 - values, values))


def test_brightness_contrast_scales_shifts_clips_and_truncates():
    image = np.uint8([[[0, 100, 250]]])
    out = photometric.brightness_contrast(image, contrast=1.1, brightness=0.1)
    # 0 -> 25.5 -> 25; 100 -> 135.5 -> 135; 250 -> 300.5 -> 255
    np.testing.assert_array_equal(out, [[[25, 135, 255]]])


def test_equalize_matches_opencv_equalize_hist_by_hand():
    # Channel 0: levels 10 (x2), 20, 30: the lowest level goes to 0, the mass above is spread
    # with scale 255 / (4 - 2): 20 -> rint(127.5) = 128, 30 -> 255. Channel 1 is flat: unchanged.
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0] = [[10, 10], [20, 30]]
    image[..., 1] = 77
    image[..., 2] = [[0, 255], [0, 255]]
    out = photometric.equalize(image)
    np.testing.assert_array_equal(out[..., 0], [[0, 0], [128, 255]])
    np.testing.assert_array_equal(out[..., 1], 77)
    np.testing.assert_array_equal(out[..., 2], [[0, 255], [0, 255]])


def test_equalize_spreads_a_narrow_histogram_over_the_full_range():
    image = np.random.default_rng(0).integers(100, 140, (64, 64, 3)).astype(np.uint8)
    out = photometric.equalize(image)
    assert out.min() == 0 and out.max() == 255
    for c in range(3):  # monotone mapping: the order of levels is kept
        order = np.argsort(image[..., c].ravel(), kind="stable")
        assert (np.diff(out[..., c].ravel()[order].astype(int)) >= 0).all()


def test_sharpen_on_a_flat_image_scales_the_interior_and_keeps_the_border():
    image = np.full((6, 7, 3), 100, np.uint8)
    alpha, lightness = 0.3, 0.8
    out = photometric.sharpen(image, alpha=alpha, lightness=lightness)
    # Interior: the kernel sums to 1 - alpha + alpha * lightness.
    assert (out[1:-1, 1:-1] == round(100 * (1 - alpha + alpha * lightness))).all()
    assert (out[0] == 100).all() and (out[:, 0] == 100).all()


def test_sharpen_enhances_an_edge():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, 4:] = 200
    out = photometric.sharpen(image, alpha=0.5, lightness=1.0).astype(int)
    assert (
        out[4, 4, 0] > 200 and out[4, 2, 0] == 0
    )  # overshoot on the bright side, flat side untouched


def test_halving_lightness_matches_colorsys_hls():
    pixels = np.random.default_rng(0).integers(0, 256, (500, 3), dtype=np.uint8)
    out = photometric._halve_lightness(pixels).astype(int)
    for rgb, got in zip(pixels, out, strict=True):
        hue, lightness, saturation = colorsys.rgb_to_hls(*(rgb / 255.0))
        expected = np.array(colorsys.hls_to_rgb(hue, lightness / 2, saturation)) * 255
        np.testing.assert_allclose(got, expected, atol=1.0)


def test_random_shadow_darkens_only_polygons_in_the_lower_half():
    image = np.full((60, 40, 3), 180, np.uint8)
    changed_any = False
    for seed in range(5):
        out = photometric.random_shadow(image, np.random.default_rng(seed))
        changed = (out != image).any(axis=2)
        assert not changed[:30].any()
        assert (out[changed] == 90).all()  # grey: lightness halved is the value halved
        changed_any |= changed.any()
    assert changed_any


@pytest.mark.parametrize("probability", [0.0, 1.0])
def test_strong_augment_probability_and_determinism(probability):
    image = _image(3)
    a = photometric.strong_augment(image, np.random.default_rng(7), probability)
    b = photometric.strong_augment(image, np.random.default_rng(7), probability)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == image.shape
    assert np.array_equal(a, image) == (probability == 0.0)


def test_strong_augment_applies_each_transform_independently_with_its_probability(
    monkeypatch,
):
    """Each of the six transforms fires with probability 0.5 (albumentations' default),
    independently of the others and in the public order."""
    names = ["posterize", "equalize", "sharpen", "solarize", "brightness_contrast", "random_shadow"]
    calls: list[str] = []
    for name in names:
        monkeypatch.setattr(
            photometric, name, lambda image, *a, _name=name, **k: calls.append(_name) or image
        )
    rng, fired = np.random.default_rng(0), []
    for _ in range(4000):
        calls.clear()
        photometric.strong_augment(_image(4, (4, 4, 3)), rng)
        assert calls == [n for n in names if n in calls]  # the public order
        fired.append([n in calls for n in names])
    fired = np.array(fired)
    np.testing.assert_allclose(fired.mean(axis=0), 0.5, atol=0.03)
    both = (fired[:, :, None] & fired[:, None, :]).mean(axis=0)
    off_diagonal = both[~np.eye(len(names), dtype=bool)]
    np.testing.assert_allclose(off_diagonal, 0.25, atol=0.03)  # independent pairs


# Against albumentations itself (the public code's library), with the parameters pinned.
A = pytest.importorskip("albumentations")


def _albumentations(transform, image):
    return transform(image=image)["image"]


def test_posterize_equalize_solarize_equal_albumentations():
    image = _image(5, (37, 53, 3))
    np.testing.assert_array_equal(
        photometric.posterize(image, bits=4),
        _albumentations(A.Posterize(num_bits=(4, 4), p=1), image),
    )
    np.testing.assert_array_equal(
        photometric.equalize(image), _albumentations(A.Equalize(p=1), image)
    )
    np.testing.assert_array_equal(
        photometric.solarize(image, threshold=128), _albumentations(A.Solarize(p=1), image)
    )


@pytest.mark.parametrize(("contrast", "brightness"), [(0.15, 0.1), (-0.2, -0.2), (0.2, 0.05)])
def test_brightness_contrast_equals_albumentations(contrast, brightness):
    image = _image(6, (37, 53, 3))
    transform = A.RandomBrightnessContrast(
        brightness_limit=(brightness, brightness), contrast_limit=(contrast, contrast), p=1
    )
    np.testing.assert_array_equal(
        photometric.brightness_contrast(image, contrast=1 + contrast, brightness=brightness),
        _albumentations(transform, image),
    )


def test_sharpen_equals_albumentations_inside_the_one_pixel_border():
    image = _image(7, (37, 53, 3))
    ours = photometric.sharpen(image, alpha=0.3, lightness=0.8).astype(int)
    theirs = _albumentations(A.Sharpen(alpha=(0.3, 0.3), lightness=(0.8, 0.8), p=1), image)
    # OpenCV rounds once after the float filter, PIL per channel in fixed point: 1 grey level.
    assert np.abs(ours[1:-1, 1:-1] - theirs[1:-1, 1:-1]).max() <= 1
