"""Native-resolution tiles: an image cut into overlapping windows, each instance in exactly one.

With `data.tile_size` T > 0 a sample is a window of its image at the image's own resolution
instead of the whole image shrunk to the model's input. The grid: along each side of length L,
windows start at 0, s, 2s, ... (s = `data.tile_stride`, default 2T/3) and the last one ends
flush with the border; a side shorter than T is one window of its own length.

Each instance goes to the grid window that holds its box whole with the widest margin (the
window most centred on it; the first such window on ties). An instance that no grid window
holds whole (its box straddles every overlap, or is longer than T) gets a window of its own,
centred on its box and shifted inside the image: T x T at native resolution when the box fits
in T ("extra"), else a square of the box's longest side, which the sample then shrinks to the
model's input like a whole image ("oversized"). Nothing is dropped: every instance is scored
once, and `TileSummary` counts each kind. Windows without an instance are not samples.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tile:
    """One sample's window of record `record`: (top, left, height, width) in source pixels,
    and the indices of the record's instances annotated in it."""

    record: int
    window: tuple[int, int, int, int]
    instances: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class TileSummary:
    images: int = 0
    instances: int = 0
    grid_tiles: int = 0  # grid windows holding at least one instance
    extra_tiles: int = 0  # windows of their own, native resolution
    oversized: int = 0  # instances longer than a tile: own window, shrunk to the input

    def __add__(self, other: TileSummary) -> TileSummary:
        return TileSummary(
            *(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self))
        )


def default_stride(tile_size: int) -> int:
    return max(1, (2 * tile_size) // 3)


def window_starts(length: int, tile_size: int, stride: int) -> list[int]:
    """Window starts along one side: every `stride` pixels, the last window flush with the end."""
    if length <= tile_size:
        return [0]
    starts = list(range(0, length - tile_size, stride))
    return [*starts, length - tile_size]


def grid_windows(height: int, width: int, tile_size: int, stride: int) -> list[tuple[int, ...]]:
    """(top, left, height, width) of the grid windows, row by row."""
    tops = window_starts(height, tile_size, stride)
    lefts = window_starts(width, tile_size, stride)
    h, w = min(height, tile_size), min(width, tile_size)
    return [(top, left, h, w) for top in tops for left in lefts]


def own_window(box: np.ndarray, height: int, width: int, tile_size: int) -> tuple[int, ...]:
    """A window of side max(tile_size, the box's longest side), centred on the box and moved
    inside the image (each side capped at the image's)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(tile_size, math.ceil(x1 - x0), math.ceil(y1 - y0))

    def start(lo: float, hi: float, length: int) -> tuple[int, int]:
        size = min(side, length)
        centred = int(math.floor((lo + hi - size) / 2))
        return min(max(centred, 0), length - size), size

    top, h = start(y0, y1, height)
    left, w = start(x0, x1, width)
    return top, left, h, w


def holding_margins(boxes: np.ndarray, windows: Sequence[tuple[int, ...]]) -> np.ndarray:
    """[instances, windows] smallest distance from each box to each window's border; negative
    where the window does not hold the box whole."""
    if len(boxes) == 0:
        return np.zeros((0, len(windows)))
    win = np.asarray(windows, np.float64).reshape(-1, 4)
    top, left = win[:, 0], win[:, 1]
    bottom, right = top + win[:, 2], left + win[:, 3]
    b = np.asarray(boxes, np.float64).reshape(-1, 4)[:, :, None]
    return np.min(
        np.stack([b[:, 0] - left, b[:, 1] - top, right - b[:, 2], bottom - b[:, 3]]), axis=0
    )


def tile_image(
    record: int,
    height: int,
    width: int,
    boxes: np.ndarray,
    tile_size: int,
    stride: int,
) -> tuple[list[Tile], TileSummary]:
    """The tiles of one image with instance boxes [n, 4] (xyxy source pixels)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    windows = grid_windows(height, width, tile_size, stride)
    margins = holding_margins(boxes, windows)
    held = (margins >= 0).any(axis=1) if len(windows) else np.zeros(len(boxes), bool)
    best = np.argmax(margins, axis=1) if len(boxes) else np.zeros(0, np.int64)
    tiles = []
    for w, window in enumerate(windows):
        members = tuple(int(i) for i in np.flatnonzero(held & (best == w)))
        if members:
            tiles.append(Tile(record, window, members))
    grid = len(tiles)
    oversized = 0
    for i in np.flatnonzero(~held):
        window = own_window(boxes[i], height, width, tile_size)
        oversized += max(window[2], window[3]) > tile_size
        tiles.append(Tile(record, window, (int(i),)))
    summary = TileSummary(
        images=1,
        instances=len(boxes),
        grid_tiles=grid,
        extra_tiles=len(tiles) - grid - oversized,
        oversized=oversized,
    )
    return tiles, summary
