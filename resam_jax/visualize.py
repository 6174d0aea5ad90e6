"""Drawing shared by every picture the project writes: instance masks and prompt points."""

from __future__ import annotations

import colorsys
from collections.abc import Iterable

import numpy as np
from PIL import ImageDraw

POSITIVE = (0, 220, 0)
NEGATIVE = (230, 0, 0)
_MASK_OPACITY = 0.5


def instance_colour(index: int) -> tuple[int, int, int]:
    """A saturated colour per instance; golden-ratio hue steps keep neighbours apart."""
    hue = (index * 0.618033988749895) % 1.0
    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.9, 1.0))


def tint_instances(image: np.ndarray, masks: np.ndarray, indices: Iterable[int]) -> np.ndarray:
    """uint8 [H, W, 3] with masks[k] (bool [K, H, W]) blended in instance_colour(k) for each k."""
    canvas = image.astype(np.float32)
    for k in indices:
        colour = np.asarray(instance_colour(int(k)), np.float32)
        canvas[masks[k]] = (1 - _MASK_OPACITY) * canvas[masks[k]] + _MASK_OPACITY * colour
    return canvas.astype(np.uint8)


def draw_point(draw: ImageDraw.ImageDraw, x: float, y: float, label: int, radius: float) -> None:
    """A prompt point: green for label 1 (object), red for 0 (background)."""
    fill = POSITIVE if label == 1 else NEGATIVE
    draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=fill, outline=(0, 0, 0))
