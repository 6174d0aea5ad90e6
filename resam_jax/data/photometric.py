"""The strong view's photometric augmentations, in numpy/PIL.

The public ReSAM code composes albumentations' Posterize, Equalize, Sharpen, Solarize,
RandomBrightnessContrast and RandomShadow with their default parameters, each applied with
probability 0.5 in that order. This module reproduces those defaults without albumentations
or OpenCV. Known differences: Sharpen leaves the 1-pixel image border unfiltered (PIL)
where OpenCV reflects, RandomShadow rasterises its polygons with PIL and changes lightness
in float instead of OpenCV's 8-bit HLS; neither matters for an augmentation.

All functions take and return uint8 [H, W, 3] RGB content (never the zero padding, which
would skew the histogram and the shadow region).
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFilter

from resam_jax.data.config import ViewConfig

# albumentations' default probability of each transform (one definition: the data config's).
STRONG_PROBABILITY = ViewConfig.strong_probability


def strong_augment(
    image: np.ndarray, rng: np.random.Generator, probability: float = STRONG_PROBABILITY
) -> np.ndarray:
    """Each augmentation independently with `probability`; parameters drawn only when applied."""
    if rng.random() < probability:
        image = posterize(image, bits=4)
    if rng.random() < probability:
        image = equalize(image)
    if rng.random() < probability:
        image = sharpen(image, alpha=rng.uniform(0.2, 0.5), lightness=rng.uniform(0.5, 1.0))
    if rng.random() < probability:
        image = solarize(image, threshold=128)
    if rng.random() < probability:
        image = brightness_contrast(
            image, contrast=1.0 + rng.uniform(-0.2, 0.2), brightness=rng.uniform(-0.2, 0.2)
        )
    if rng.random() < probability:
        image = random_shadow(image, rng)
    return image


def _apply_lut(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    return np.take(lut.astype(np.uint8), image)


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    """Keeps the `bits` most significant bits of every channel."""
    return image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def equalize(image: np.ndarray) -> np.ndarray:
    """Per-channel histogram equalisation with OpenCV's `equalizeHist` lookup table."""
    out = np.empty_like(image)
    for c in range(image.shape[-1]):
        channel = image[..., c]
        hist = np.bincount(channel.ravel(), minlength=256)
        first = int(np.flatnonzero(hist)[0])
        if hist[first] == channel.size:
            out[..., c] = first  # a flat channel stays as it is
            continue
        # OpenCV maps the lowest occupied level to 0 and spreads the remaining mass over 0..255.
        # In float32, as OpenCV computes the table (float64 rounds a few levels differently).
        scale = np.float32(255.0) / np.float32(channel.size - hist[first])
        lut = np.rint((np.cumsum(hist) - hist[first]).astype(np.float32) * scale)
        lut[: first + 1] = 0
        out[..., c] = _apply_lut(channel, np.clip(lut, 0, 255))
    return out


def sharpen(image: np.ndarray, alpha: float, lightness: float) -> np.ndarray:
    """Blend of identity and a Laplacian-style kernel, as albumentations' Sharpen."""
    identity = np.zeros((3, 3))
    identity[1, 1] = 1.0
    effect = -np.ones((3, 3))
    effect[1, 1] = 8.0 + lightness
    kernel = (1.0 - alpha) * identity + alpha * effect
    # scale=1: the kernel does not sum to 1 on purpose (lightness brightens the image).
    pil_filter = PIL.ImageFilter.Kernel((3, 3), kernel.ravel().tolist(), scale=1.0)
    return np.asarray(PIL.Image.fromarray(image).filter(pil_filter))


def solarize(image: np.ndarray, threshold: int) -> np.ndarray:
    """Inverts every value at or above `threshold`."""
    levels = np.arange(256)
    return _apply_lut(image, np.where(levels >= threshold, 255 - levels, levels))


def brightness_contrast(image: np.ndarray, contrast: float, brightness: float) -> np.ndarray:
    """value * contrast + brightness * 255, clipped and truncated to uint8 (brightness_by_max)."""
    lut = np.arange(256, dtype=np.float32) * np.float32(contrast) + np.float32(brightness * 255.0)
    return _apply_lut(image, np.clip(lut, 0, 255))


def random_shadow(
    image: np.ndarray,
    rng: np.random.Generator,
    roi: tuple[float, float, float, float] = (0.0, 0.5, 1.0, 1.0),
    num_shadows: tuple[int, int] = (1, 2),
    vertices: int = 5,
) -> np.ndarray:
    """Halves the HLS lightness inside 1-2 random pentagons in the lower half of the image."""
    height, width = image.shape[:2]
    x_min, x_max = int(roi[0] * width), int(roi[2] * width)
    y_min, y_max = int(roi[1] * height), int(roi[3] * height)
    region = PIL.Image.new("L", (width, height), 0)
    draw = PIL.ImageDraw.Draw(region)
    for _ in range(rng.integers(num_shadows[0], num_shadows[1] + 1)):
        xs = rng.integers(x_min, max(x_max, x_min + 1), size=vertices)
        ys = rng.integers(y_min, max(y_max, y_min + 1), size=vertices)
        draw.polygon(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=255)
    inside = np.asarray(region) > 0
    out = image.copy()
    out[inside] = _halve_lightness(image[inside])
    return out


def _halve_lightness(pixels: np.ndarray) -> np.ndarray:
    """RGB [K, 3] -> RGB with HLS lightness halved, hue and saturation kept."""
    rgb = pixels.astype(np.float32)
    high, low = rgb.max(axis=1, keepdims=True), rgb.min(axis=1, keepdims=True)
    chroma = high - low
    lightness = (high + low) / 2.0
    # HLS saturation, from the branch the current lightness falls in (0..255 scale).
    saturation = np.where(
        lightness <= 127.5,
        chroma / np.maximum(high + low, 1e-6),
        chroma / np.maximum(510.0 - high - low, 1e-6),
    )
    new_lightness = lightness / 2.0  # always <= 127.5, so the lower branch applies
    new_high = new_lightness * (1.0 + saturation)
    new_low = new_lightness * (1.0 - saturation)
    # Each channel keeps its relative position between min and max: that is the hue.
    relative = np.where(chroma > 0, (rgb - low) / np.maximum(chroma, 1e-6), 0.0)
    out = new_low + relative * (new_high - new_low)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
