"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich 2019), deterministic per image.

The definitions, constants and severity tables are those of the `imagecorruptions` package
(bethgelab, v1.1.2, Apache-2.0), which adapts Hendrycks' code to any image size. The package
itself is not a dependency: on the current stack it does not import (`pkg_resources`, gone from
setuptools >= 81), `fog` fails (`np.float_`, gone in NumPy 2), `glass_blur` fails
(`skimage.filters.gaussian(multichannel=)`, gone in scikit-image 0.21), `impulse_noise` ignores
NumPy's global seed (current scikit-image draws from its own unseeded generator), every random
corruption draws from NumPy's global state (a process-wide lock around every call for grain's
reader threads), and it pulls in opencv-python (the GUI build, needs libGL) and scikit-image.
So the 15 are written here on NumPy, SciPy and Pillow, line by line after the package:

* every random draw goes through a `np.random.RandomState` made for the call from (image id,
  corruption), with the same methods in the same order as the package's global draws, so a
  seeded package call and this module agree draw for draw (tests/test_data_corruptions.py
  checks it where the package is importable); no global state, nothing shared between threads;
* the OpenCV / scikit-image calls have their NumPy / SciPy equivalents: cv2.filter2D and
  cv2.GaussianBlur (border REFLECT_101) as correlations with mirrored borders, skimage's
  gaussian as scipy.ndimage.gaussian_filter with its modes and truncation, cv2.resize
  INTER_CUBIC as separable cubic weights (a = -0.75, half-pixel centres, clamped borders),
  skimage's HSV round trip in `brightness` as its closed form (V' = min(V + c, 1) scales the
  RGB of a pixel by V'/V; a black pixel becomes grey V'), cv2's gray conversion as
  0.299 R + 0.587 G + 0.114 B;
* `glass_blur` keeps the reference's "swap", which is a copy (`x[h, w], x[h', w'] = x[h', w'],
  x[h, w]` on NumPy views), done on a flat index permutation so it stays a Python loop over
  pixels but a cheap one;
* `frost` overlays the package's frost pictures, shipped in resam_jax/assets/frost (the five
  the package draws from; its frost6.jpg is never picked, `randint(5)`).

The output is `np.uint8` of the float result (truncation, as `imagecorruptions.corrupt`).
"""

from __future__ import annotations

import io
import math
import zlib
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, signal

from resam_jax.data.config import CORRUPTIONS, SEVERITIES  # noqa: F401 (re-exported)

FROST_DIR = Path(__file__).resolve().parent.parent / "assets" / "frost"
FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
_SALT = 0x5E5A4D  # keeps these streams apart from the pipeline's own seeds


def check(name: str, severity: int) -> None:
    """ValueError naming the valid choices for an unknown corruption or a severity outside 1-5."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; expected one of: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"corruption severity must be an integer in 1-5, got {severity!r}")


def corruption_rng(image_id: int, name: str) -> np.random.RandomState:
    """The generator for one image and corruption: the same in every epoch, process and
    thread, and for every severity (severities differ in strength, not in the draw)."""
    entropy = [_SALT, int(image_id) % 2**64, zlib.crc32(name.encode())]
    return np.random.RandomState(np.random.SeedSequence(entropy).generate_state(4))


def corrupt(image: np.ndarray, name: str, severity: int, image_id: int) -> np.ndarray:
    """`image` (uint8 [H, W, 3]) with corruption `name` at `severity` (1-5): uint8, same shape."""
    check(name, severity)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {image.dtype} {image.shape}")
    out = _FUNCTIONS[name](image, severity, corruption_rng(image_id, name))
    return np.uint8(out)


# --------------------------------------------------------------------------- helpers


def _correlate_mirror(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """cv2.filter2D (default border REFLECT_101) of a 2-D array with an odd, symmetric kernel."""
    ry, rx = kernel.shape[0] // 2, kernel.shape[1] // 2
    padded = np.pad(x, ((ry, ry), (rx, rx)), mode="reflect")  # numpy reflect = REFLECT_101
    return signal.fftconvolve(padded, kernel[::-1, ::-1], mode="valid")


def _gaussian(x: np.ndarray, sigma, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """skimage.filters.gaussian on a float image (channels last when 3-D)."""
    sigma = np.broadcast_to(np.asarray(sigma, np.float64), (2,))
    sigmas = (*sigma, 0.0) if x.ndim == 3 else tuple(sigma)
    return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _cv2_gaussian_kernel(ksize: int, sigma: float) -> np.ndarray:
    i = np.arange(ksize) - (ksize - 1) / 2
    k = np.exp(-(i**2) / (2 * sigma**2))
    return k / k.sum()


def disk(radius: float, alias_blur: float = 0.1) -> np.ndarray:
    if radius <= 8:
        coords, ksize = np.arange(-8, 8 + 1), 3
    else:
        coords, ksize = np.arange(-radius, radius + 1), 5
    xx, yy = np.meshgrid(coords, coords)
    aliased = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    aliased /= np.sum(aliased)
    k = _cv2_gaussian_kernel(ksize, alias_blur)
    return _correlate_mirror(aliased.astype(np.float64), np.outer(k, k)).astype(np.float32)


def plasma_fractal(rng, mapsize: int = 256, wibbledecay: float = 3) -> np.ndarray:
    """Diamond-square heightmap in [0, 1], side `mapsize` (a power of two)."""
    assert mapsize & (mapsize - 1) == 0
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100

    def wibbledmean(array):
        return array / 4 + wibble * rng.uniform(-wibble, wibble, array.shape)

    def fillsquares():
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize] = (
            wibbledmean(squareaccum)
        )

    def filldiamonds():
        drgrid = maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + ulgrid + np.roll(ulgrid, -1, axis=1)
        maparray[0:mapsize:stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + ulgrid + np.roll(ulgrid, -1, axis=0)
        maparray[stepsize // 2 : mapsize : stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def clipped_zoom(img: np.ndarray, zoom_factor: float) -> np.ndarray:
    ch0 = int(np.ceil(img.shape[0] / float(zoom_factor)))
    top0 = (img.shape[0] - ch0) // 2
    ch1 = int(np.ceil(img.shape[1] / float(zoom_factor)))
    top1 = (img.shape[1] - ch1) // 2
    return ndimage.zoom(
        img[top0 : top0 + ch0, top1 : top1 + ch1], (zoom_factor, zoom_factor, 1), order=1
    )


def _shift(image: np.ndarray, dx: int, dy: int) -> np.ndarray:
    if dx < 0:
        shifted = np.roll(image, shift=image.shape[1] + dx, axis=1)
        shifted[:, dx:] = shifted[:, dx - 1 : dx]
    elif dx > 0:
        shifted = np.roll(image, shift=dx, axis=1)
        shifted[:, :dx] = shifted[:, dx : dx + 1]
    else:
        shifted = image
    if dy < 0:
        shifted = np.roll(shifted, shift=image.shape[0] + dy, axis=0)
        shifted[dy:, :] = shifted[dy - 1 : dy, :]
    elif dy > 0:
        shifted = np.roll(shifted, shift=dy, axis=0)
        shifted[:dy, :] = shifted[dy : dy + 1, :]
    return shifted


def _motion_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    width = radius * 2 + 1
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    kernel = kernel / np.sum(kernel)
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    blurred = np.zeros_like(x, dtype=np.float32)
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if np.abs(dy) >= x.shape[0] or np.abs(dx) >= x.shape[1]:
            break  # the simulated motion left the image
        blurred = blurred + kernel[i] * _shift(x, dx, dy)
    return blurred


def _cubic_weights(source: int, target: int) -> np.ndarray:
    """[target, source] weights of cv2.resize INTER_CUBIC along one axis."""
    a = -0.75
    f = (np.arange(target) + 0.5) * (source / target) - 0.5
    s = np.floor(f).astype(np.int64)
    t = f - s
    coeffs = np.stack(
        [
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1,
        ],
        axis=1,
    )
    coeffs = np.concatenate([coeffs, 1 - coeffs.sum(axis=1, keepdims=True)], axis=1)
    weights = np.zeros((target, source))
    for k in range(4):
        np.add.at(weights, (np.arange(target), np.clip(s - 1 + k, 0, source - 1)), coeffs[:, k])
    return weights


def _resize_cubic(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """cv2.resize(image, dsize=size (w, h), interpolation=cv2.INTER_CUBIC) of a uint8 image."""
    wy = _cubic_weights(image.shape[0], size[1])
    wx = _cubic_weights(image.shape[1], size[0])
    out = np.einsum("ij,jkc,lk->ilc", wy, image.astype(np.float64), wx, optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


@cache
def _frost_picture(index: int) -> np.ndarray:
    with Image.open(FROST_DIR / FROST_FILES[index]) as picture:
        out = np.asarray(picture.convert("RGB"))
    out.flags.writeable = False
    return out


# --------------------------------------------------------------------------- corruptions


def gaussian_noise(x, severity, rng):
    c = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    x = np.array(x) / 255.0
    return np.clip(x + rng.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, severity, rng):
    c = [60, 25, 12, 5, 3][severity - 1]
    x = np.array(x) / 255.0
    return np.clip(rng.poisson(x * c) / float(c), 0, 1) * 255


def impulse_noise(x, severity, rng):
    # skimage.util.random_noise(x, mode="s&p", amount=c): salt or pepper, half each.
    c = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    x = np.array(x) / 255.0
    flipped = rng.random_sample(x.shape) <= c
    salted = rng.random_sample(x.shape) <= 0.5
    x[flipped & salted] = 1
    x[flipped & ~salted] = 0
    return np.clip(x, 0, 1) * 255


def defocus_blur(x, severity, rng):
    c = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    x = np.array(x) / 255.0
    kernel = disk(radius=c[0], alias_blur=c[1])
    channels = np.stack([_correlate_mirror(x[:, :, d], kernel) for d in range(3)], axis=-1)
    return np.clip(channels, 0, 1) * 255


def glass_blur(x, severity, rng):
    c = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    sigma, delta, iterations = c
    x = np.uint8(_gaussian(np.array(x) / 255.0, sigma) * 255)
    height, width = x.shape[:2]
    # Where each pixel now reads from; the reference's "swap" copies (h', w') into (h, w).
    source = list(range(height * width))
    for _ in range(iterations):
        rows = range(height - delta, delta, -1)
        cols = range(width - delta, delta, -1)
        draws = rng.randint(-delta, delta, size=(len(rows) * len(cols), 2)).tolist()
        k = 0
        for h in rows:
            for w in cols:
                dx, dy = draws[k]
                k += 1
                source[h * width + w] = source[(h + dy) * width + (w + dx)]
    x = x.reshape(-1, 3)[np.asarray(source)].reshape(height, width, 3)
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255


def motion_blur(x, severity, rng):
    c = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    angle = rng.uniform(-45, 45)
    return np.clip(_motion_blur(np.array(x), radius=c[0], sigma=c[1], angle=angle), 0, 255)


def zoom_blur(x, severity, rng):
    c = [
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.02),
        np.arange(1, 1.26, 0.02),
        np.arange(1, 1.31, 0.03),
    ][severity - 1]
    x = (np.array(x) / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for zoom_factor in c:
        layer = clipped_zoom(x, zoom_factor)[: x.shape[0], : x.shape[1], :]
        out[: layer.shape[0], : layer.shape[1]] += layer
    x = (x + out) / (len(c) + 1)
    return np.clip(x, 0, 1) * 255


def snow(x, severity, rng):
    c = [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ][severity - 1]
    x = np.array(x, dtype=np.float32) / 255.0
    snow_layer = rng.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    snow_layer = clipped_zoom(snow_layer[..., np.newaxis], c[2])
    snow_layer[snow_layer < c[3]] = 0
    snow_layer = np.clip(snow_layer.squeeze(), 0, 1)
    snow_layer = _motion_blur(snow_layer, radius=c[4], sigma=c[5], angle=rng.uniform(-135, -45))
    snow_layer = np.round(snow_layer * 255).astype(np.uint8) / 255.0
    snow_layer = snow_layer[..., np.newaxis][: x.shape[0], : x.shape[1], :]
    gray = x @ np.float32([0.299, 0.587, 0.114])  # cv2.COLOR_RGB2GRAY
    x = c[6] * x + (1 - c[6]) * np.maximum(x, gray[..., np.newaxis] * 1.5 + 0.5)
    return np.clip(x + snow_layer + np.rot90(snow_layer, k=2), 0, 1) * 255


def frost(x, severity, rng):
    c = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    picture = _frost_picture(rng.randint(5))
    fh, fw = picture.shape[:2]
    xh, xw = x.shape[:2]
    # Scale the frost picture so it covers the image, then 10% more.
    scaling_factor = max(1.0, xh / fh, xw / fw) * 1.1
    new_size = (int(np.ceil(fw * scaling_factor)), int(np.ceil(fh * scaling_factor)))
    rescaled = _resize_cubic(picture, new_size)
    top = rng.randint(0, rescaled.shape[0] - xh)
    left = rng.randint(0, rescaled.shape[1] - xw)
    rescaled = rescaled[top : top + xh, left : left + xw]
    return np.clip(c[0] * np.array(x) + c[1] * rescaled, 0, 255)


def fog(x, severity, rng):
    c = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    map_size = 1 << (max(x.shape) - 1).bit_length()  # next power of two
    x = np.array(x) / 255.0
    max_val = x.max()
    layer = plasma_fractal(rng, mapsize=map_size, wibbledecay=c[1])[: x.shape[0], : x.shape[1]]
    x += c[0] * layer[..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def brightness(x, severity, rng):
    # skimage rgb2hsv, V = clip(V + c, 0, 1), hsv2rgb: hue and saturation stay, so RGB scales by
    # V'/V; a black pixel (V = 0, S = 0) becomes grey V' = c.
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    x = np.array(x) / 255.0
    v = x.max(axis=-1, keepdims=True)
    v_new = np.clip(v + c, 0, 1)
    scale = np.divide(v_new, v, out=np.zeros_like(v), where=v > 0)
    x = np.where(v > 0, x * scale, v_new)
    return np.clip(x, 0, 1) * 255


def contrast(x, severity, rng):
    c = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    x = np.array(x) / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def elastic_transform(x, severity, rng):
    image = np.array(x, dtype=np.float32) / 255.0
    shape = image.shape
    sigma = np.array(shape[:2]) * 0.01
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    max_dx = max_dy = shape[0] * 0.005
    dx = _gaussian(rng.uniform(-max_dx, max_dx, size=shape[:2]), sigma, "reflect", 3) * alpha
    dy = _gaussian(rng.uniform(-max_dy, max_dy, size=shape[:2]), sigma, "reflect", 3) * alpha
    dx, dy = dx.astype(np.float32)[..., np.newaxis], dy.astype(np.float32)[..., np.newaxis]
    cols, rows, chans = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = (
        np.reshape(rows + dy, (-1, 1)),
        np.reshape(cols + dx, (-1, 1)),
        np.reshape(chans, (-1, 1)),
    )
    warped = ndimage.map_coordinates(image, indices, order=1, mode="reflect").reshape(shape)
    return np.clip(warped, 0, 1) * 255


def pixelate(x, severity, rng):
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    height, width = x.shape[:2]
    picture = Image.fromarray(x).resize((int(width * c), int(height * c)), Image.BOX)
    return np.asarray(picture.resize((width, height), Image.NEAREST))


def jpeg_compression(x, severity, rng):
    c = [25, 18, 15, 10, 7][severity - 1]
    output = io.BytesIO()
    Image.fromarray(x).save(output, "JPEG", quality=c)
    with Image.open(output) as picture:
        return np.asarray(picture.convert("RGB"))


_FUNCTIONS = {name: globals()[name] for name in CORRUPTIONS}
