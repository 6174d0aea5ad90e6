"""SAM's ResizeLongestSide, on host numpy arrays (shared by the predictor and the data pipeline)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def preprocess_shape(height: int, width: int, long_side: int) -> tuple[int, int]:
    """(h, w) after scaling the longest side to `long_side`, rounded as SAM rounds."""
    scale = long_side * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W(, C)] -> [h, w(, C)] for size (h, w).

    PIL's bilinear filter (antialiased when shrinking) is what SAM's
    torchvision `resize(to_pil_image(image))` runs, so the pixels are the same.
    """
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """uint8 [H, W(, C)] -> resized so that max(h, w) == long_side, as SAM's ResizeLongestSide."""
    return resize_image(image, preprocess_shape(image.shape[0], image.shape[1], long_side))


def scale_coords(coords: np.ndarray, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """Points [..., 2] (x, y) in the original image -> the resized frame, as SAM's apply_coords."""
    old_h, old_w = original_size
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    coords = np.array(coords, dtype=np.float64)
    coords[..., 0] *= new_w / old_w
    coords[..., 1] *= new_h / old_h
    return coords
