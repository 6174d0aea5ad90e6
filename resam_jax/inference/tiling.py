"""Large scenes in overlapping tiles: the tile grid, which tile answers each prompt, one encode
per tile for all its prompts (tiles batched across devices), and merging instance masks into a
label image. No raster or vector I/O here (resam_jax/inference/scene.py does that).

Coordinates are scene pixel indices (x = column, y = row; the centre of pixel (c, r) is at
(c, r)), as `SamPredictor` takes them.

Routing. A prompt goes to the tile that contains its extent (its points and box) with the most
margin, the margin being the distance from the extent to the nearest tile border that lies
inside the scene (a border on the scene's edge cuts nothing). Tile centres are tile_size -
overlap apart, so the chosen tile keeps at least (overlap - w) / 2 pixels of context beyond a
prompt w pixels wide (overlap / 2 around a point) in every direction the scene continues: an
object that straddles the border between two tiles is segmented whole in the tile nearest to
centred on it as long as it reaches no further beyond its prompt (a box prompt covers its
object; for point prompts choose an overlap of at least twice the objects' size). With
overlap = tile_size / 2, every tile border is the centre line of another tile. A prompt wider
than a tile fits no tile and is refused.

Overlaps. Masks of different prompts may overlap (two prompts on one object, masks of
neighbours that bleed into each other). Each pixel goes to the instance with the highest
predicted IoU among those covering it, the lower label on a tie, whatever the order in which
tiles are processed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import defaultdict
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resam_jax import parallel
from resam_jax.inference.predictor import prepare_image
from resam_jax.models.sam import Sam, normalize_pixels, postprocess_masks
from resam_jax.transforms import scale_coords

# Prompts decoded per tile in one call: bounds the [tiles, prompts, H, W] mask block in memory.
MAX_PROMPTS_PER_CALL = 16


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One instance's prompt: points (with labels 1 object / 0 background) and/or a box."""

    prompt_id: object
    points: np.ndarray  # [P, 2] float64 (x, y), P may be 0
    labels: np.ndarray  # [P] int32
    box: np.ndarray | None = None  # [4] x0, y0, x1, y1

    def extent(self) -> np.ndarray:
        """x0, y0, x1, y1 covering the points and the box."""
        corners = (
            self.points if self.box is None else np.vstack([self.points, self.box.reshape(2, 2)])
        )
        return np.concatenate([corners.min(axis=0), corners.max(axis=0)])

    def shifted(self, dx: float, dy: float) -> Prompt:
        offset = np.array([dx, dy])
        box = None if self.box is None else self.box - np.tile(offset, 2)
        return dataclasses.replace(self, points=self.points - offset, box=box)


@dataclasses.dataclass(frozen=True)
class Tile:
    """A window of the scene: its top-left pixel and size."""

    col: int
    row: int
    width: int
    height: int


def tile_origins(length: int, tile_size: int, overlap: int) -> list[int]:
    """Start offsets along one axis: every tile_size - overlap pixels, the last one flush with
    the scene's end so that every tile is whole."""
    if length <= tile_size:
        return [0]
    starts = list(range(0, length - tile_size, tile_size - overlap))
    return starts + [length - tile_size]


def tile_grid(height: int, width: int, tile_size: int, overlap: int) -> list[Tile]:
    """Row-major tiles covering the scene; all of one size (the scene's where it is smaller)."""
    h, w = min(tile_size, height), min(tile_size, width)
    return [
        Tile(col, row, w, h)
        for row in tile_origins(height, tile_size, overlap)
        for col in tile_origins(width, tile_size, overlap)
    ]


def route(extent: np.ndarray, tiles: Sequence[Tile], height: int, width: int) -> int | None:
    """Index of the tile that contains `extent` (x0, y0, x1, y1) with the most margin to its
    borders inside the scene (the first such tile on a tie); None if no tile contains it."""
    col = np.array([t.col for t in tiles], float)
    row = np.array([t.row for t in tiles], float)
    right, bottom = col + tiles[0].width, row + tiles[0].height
    x0, y0, x1, y1 = extent
    # Pixel (c, r) covers [c - 0.5, c + 0.5]: a tile's pixel area starts half a pixel early.
    margins = np.stack([x0 - (col - 0.5), y0 - (row - 0.5), right - 0.5 - x1, bottom - 0.5 - y1])
    inside = (margins >= 0).all(axis=0)
    if not inside.any():
        return None
    on_scene_edge = np.stack([col == 0, row == 0, right == width, bottom == height])
    margin = np.where(on_scene_edge, np.inf, margins).min(axis=0)
    return int(np.argmax(np.where(inside, margin, -np.inf)))


def paste_instance(
    labels: np.ndarray, scores: np.ndarray, mask: np.ndarray, label: int, score: float
) -> None:
    """Write instance `label` into a window of the label image where its `mask` is set and no
    instance with a higher predicted IoU (or the same IoU and a lower label) already is.
    `scores` holds each pixel's current owner's IoU (-inf for background); both update in place."""
    wins = mask & ((score > scores) | ((score == scores) & (label < labels)))
    labels[wins] = label
    scores[wins] = score


# Module-level jits (the model's graphdef static), so that every TileSegmenter of a model
# shares one compilation per shape.
@functools.partial(jax.jit, static_argnums=(0, 4))
def _encode_tiles(graphdef, state, images, content, pixel_norm):
    return nnx.merge(graphdef, state).encode(normalize_pixels(images, content, pixel_norm))


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _decode_tiles(graphdef, state, embeddings, points, labels, boxes, multimask, sizes):
    """Masks [B, N, H, W] (bool, tile pixels) and predicted IoUs [B, N]; `sizes` is SAM's
    (image_size, input_size, original_size) of the tiles."""
    model = nnx.merge(graphdef, state)
    low_res, iou = model.decode(embeddings, points, labels, boxes, None, multimask)
    # One mask per prompt: the only one, or the candidate with the best predicted IoU.
    best = jnp.argmax(iou, axis=-1)
    low_res = jnp.take_along_axis(low_res, best[..., None, None, None], axis=2)[:, :, 0]
    iou = jnp.take_along_axis(iou, best[..., None], axis=2)[..., 0]
    return postprocess_masks(low_res, *sizes) > Sam.mask_threshold, iou


class TileSegmenter:
    """Encode batches of equally sized tiles once, decode every prompt of each tile against its
    embedding. Tiles are sharded along the ("data",) mesh over this process's devices, the
    model replicated; a batch is padded with empty tiles to a multiple of the device count, so
    one compilation serves every batch."""

    def __init__(
        self,
        model: Sam,
        tile_shape: tuple[int, int],
        batch_tiles: int,
        pixel_norm: str = "sam",
        multimask: bool = False,
    ):
        self.image_size = model.config.image_size
        self.tile_shape = tuple(tile_shape)
        self.mesh = parallel.data_mesh()
        devices = self.mesh.devices.size
        self.batch_tiles = -(-batch_tiles // devices) * devices
        self._graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, parallel.replicated(self.mesh))
        self.pixel_norm, self.multimask = pixel_norm, multimask
        _, _, self.input_size = prepare_image(
            np.zeros((*self.tile_shape, 3), np.uint8), self.image_size
        )

    def _sharded(self, array: np.ndarray) -> jax.Array:
        return jax.device_put(array, parallel.batch_sharded(self.mesh))

    def segment(
        self, images: Sequence[np.ndarray], prompts: Sequence[Sequence[Prompt]]
    ) -> Iterator[tuple[int, int, np.ndarray, float]]:
        """Tiles (uint8 [H, W, 3], up to `batch_tiles`) and each tile's prompts in its own
        pixel coordinates -> (tile, prompt, mask [H, W] bool, predicted IoU) for every prompt,
        one decode call at a time: at most batch_tiles x MAX_PROMPTS_PER_CALL masks are held."""
        if len(images) > self.batch_tiles or len(images) != len(prompts):
            raise ValueError(
                f"{len(images)} tiles, {len(prompts)} prompt lists, batch {self.batch_tiles}"
            )
        size, batch = self.image_size, self.batch_tiles
        padded = np.zeros((batch, size, size, 3), np.uint8)
        content = np.zeros((batch, size, size), bool)
        for i, image in enumerate(images):
            padded[i], content[i], _ = prepare_image(image, size)
        embeddings = _encode_tiles(
            self._graphdef,
            self._state,
            self._sharded(padded),
            self._sharded(content),
            self.pixel_norm,
        )
        # Prompts with the same number of points and the same box-or-not decode together: SAM's
        # output depends on its token count, so they cannot be padded to a common shape.
        groups: dict[tuple[int, bool], list[list[int]]] = defaultdict(
            lambda: [[] for _ in range(batch)]
        )
        for t, tile_prompts in enumerate(prompts):
            for i, p in enumerate(tile_prompts):
                groups[len(p.points), p.box is not None][t].append(i)
        for (num_points, has_box), members in groups.items():
            calls = -(-max(len(m) for m in members) // MAX_PROMPTS_PER_CALL)
            for call in range(calls):
                chunk = [m[call * MAX_PROMPTS_PER_CALL :][:MAX_PROMPTS_PER_CALL] for m in members]
                slots = 1 << (max(len(c) for c in chunk) - 1).bit_length()  # few shapes to compile
                points = np.zeros((batch, slots, num_points, 2), np.float32)
                labels = np.full((batch, slots, num_points), -1, np.int32)
                boxes = np.zeros((batch, slots, 4), np.float32)
                for t, indices in enumerate(chunk):
                    for s, i in enumerate(indices):
                        p = prompts[t][i]
                        points[t, s] = scale_coords(p.points, self.tile_shape, size)
                        labels[t, s] = p.labels
                        if has_box:
                            boxes[t, s] = scale_coords(
                                p.box.reshape(2, 2), self.tile_shape, size
                            ).reshape(4)
                masks, iou = _decode_tiles(
                    self._graphdef,
                    self._state,
                    embeddings,
                    self._sharded(points) if num_points else None,
                    self._sharded(labels) if num_points else None,
                    self._sharded(boxes) if has_box else None,
                    self.multimask,
                    (size, self.input_size, self.tile_shape),
                )
                masks, iou = np.asarray(masks), np.asarray(iou)
                for t, indices in enumerate(chunk):
                    for s, i in enumerate(indices):
                        yield t, i, masks[t, s], float(iou[t, s])
