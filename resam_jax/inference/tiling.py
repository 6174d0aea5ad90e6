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
from resam_jax.inference.predictor_sam2 import MASK_THRESHOLD as SAM2_MASK_THRESHOLD
from resam_jax.inference.predictor_sam2 import prepare_image as prepare_sam2_image
from resam_jax.models.sam import Sam, normalize_pixels, postprocess_masks
from resam_jax.models.sam.layers import resize_bilinear
from resam_jax.models.sam2 import Sam2
from resam_jax.models.sam2 import normalize_pixels as normalize_sam2_pixels
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


@functools.partial(jax.jit, static_argnums=0)
def _encode_tiles_sam2(graphdef, state, pixels):
    return nnx.merge(graphdef, state).encode(normalize_sam2_pixels(pixels))


@functools.partial(jax.jit, static_argnums=(0, 6, 7))
def _decode_tiles_sam2(graphdef, state, features, points, labels, boxes, multimask, tile_shape):
    """SAM 2: masks [B, N, H, W] (bool, tile pixels) and predicted IoUs [B, N], each what
    Sam2ImagePredictor.predict gives for that prompt on that tile (the dynamic single-mask
    fallback on; with `multimask` the candidate with the best predicted IoU)."""
    model = nnx.merge(graphdef, state)
    b, n = (points if points is not None else boxes).shape[:2]

    def flat(x):
        return None if x is None else x.reshape(b * n, *x.shape[2:])

    sparse, dense = model.embed_prompts(flat(points), flat(labels), flat(boxes))
    repeated = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), features)
    low_res, iou, _, _ = model.decode(
        repeated, sparse, dense, multimask_output=multimask, dynamic_multimask=True
    )
    best = jnp.argmax(iou, axis=-1)
    low_res = jnp.take_along_axis(low_res, best[:, None, None, None], axis=1)[:, 0]
    iou = jnp.take_along_axis(iou, best[:, None], axis=1)[:, 0]
    # As the predictor: bilinear straight from the low-res logits to the tile's size.
    masks = resize_bilinear(low_res.astype(jnp.float32), *tile_shape) > SAM2_MASK_THRESHOLD
    return masks.reshape(b, n, *tile_shape), iou.reshape(b, n)


def tile_segmenter(
    model: Sam | Sam2,
    tile_shape: tuple[int, int],
    batch_tiles: int,
    pixel_norm: str = "sam",
    multimask: bool = False,
) -> TileSegmenter:
    """The TileSegmenter of the model's family: SAM's (SamPredictor's frame: longest side
    resized, padded) or SAM 2's (Sam2ImagePredictor's: each tile stretched to the model's
    square, ImageNet normalisation; `pixel_norm` does not apply)."""
    if isinstance(model, Sam2):
        return Sam2TileSegmenter(model, tile_shape, batch_tiles, multimask=multimask)
    return TileSegmenter(model, tile_shape, batch_tiles, pixel_norm, multimask)


class TileSegmenter:
    """Encode batches of equally sized tiles once, decode every prompt of each tile against its
    embedding. Tiles are sharded along the ("data",) mesh over this process's devices, the
    model replicated; a batch is padded with empty tiles to a multiple of the device count, so
    one compilation serves every batch. Each mask is what SamPredictor gives on the tile."""

    def __init__(
        self,
        model: Sam,
        tile_shape: tuple[int, int],
        batch_tiles: int,
        pixel_norm: str = "sam",
        multimask: bool = False,
    ):
        self._place(model, tile_shape, batch_tiles)
        self.pixel_norm, self.multimask = pixel_norm, multimask
        _, _, self.input_size = prepare_image(
            np.zeros((*self.tile_shape, 3), np.uint8), self.image_size
        )

    def _place(self, model: Sam | Sam2, tile_shape: tuple[int, int], batch_tiles: int) -> None:
        """The model replicated over this process's devices, the batch a multiple of them."""
        self.image_size = model.config.image_size
        self.tile_shape = tuple(tile_shape)
        self.mesh = parallel.data_mesh()
        devices = self.mesh.devices.size
        self.batch_tiles = -(-batch_tiles // devices) * devices
        self._graphdef, state = nnx.split(model)
        self._state = jax.device_put(state, parallel.replicated(self.mesh))

    def _sharded(self, array: np.ndarray) -> jax.Array:
        return jax.device_put(array, parallel.batch_sharded(self.mesh))

    # What a family changes: the tiles' pixels, the prompts' frame, the decode.

    def _encode(self, images: Sequence[np.ndarray]):
        size, batch = self.image_size, self.batch_tiles
        padded = np.zeros((batch, size, size, 3), np.uint8)
        content = np.zeros((batch, size, size), bool)
        for i, image in enumerate(images):
            padded[i], content[i], _ = prepare_image(image, size)
        return _encode_tiles(
            self._graphdef,
            self._state,
            self._sharded(padded),
            self._sharded(content),
            self.pixel_norm,
        )

    def _model_coords(self, xy: np.ndarray) -> np.ndarray:
        """Tile pixel coordinates [..., 2] -> the model's input frame."""
        return scale_coords(xy, self.tile_shape, self.image_size)

    def _decode(self, embeddings, points, labels, boxes):
        return _decode_tiles(
            self._graphdef,
            self._state,
            embeddings,
            points,
            labels,
            boxes,
            self.multimask,
            (self.image_size, self.input_size, self.tile_shape),
        )

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
        batch = self.batch_tiles
        embeddings = self._encode(images)
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
                        points[t, s] = self._model_coords(p.points)
                        labels[t, s] = p.labels
                        if has_box:
                            boxes[t, s] = self._model_coords(p.box.reshape(2, 2)).reshape(4)
                masks, iou = self._decode(
                    embeddings,
                    self._sharded(points) if num_points else None,
                    self._sharded(labels) if num_points else None,
                    self._sharded(boxes) if has_box else None,
                )
                masks, iou = np.asarray(masks), np.asarray(iou)
                for t, indices in enumerate(chunk):
                    for s, i in enumerate(indices):
                        yield t, i, masks[t, s], float(iou[t, s])


class Sam2TileSegmenter(TileSegmenter):
    """TileSegmenter for SAM 2: each mask is what Sam2ImagePredictor (its defaults) gives on the
    tile: the tile stretched to the model's square by the antialiased resize, ImageNet
    normalisation, prompts scaled per axis, boxes as two corner points, the single-mask
    fallback on, logits upsampled bilinearly to the tile and thresholded at 0."""

    def __init__(
        self,
        model: Sam2,
        tile_shape: tuple[int, int],
        batch_tiles: int,
        multimask: bool = False,
    ):
        self._place(model, tile_shape, batch_tiles)
        self.pixel_norm, self.multimask = "sam", multimask

    def _encode(self, images: Sequence[np.ndarray]):
        size = self.image_size
        pixels = np.zeros((self.batch_tiles, size, size, 3), np.float32)
        for i, image in enumerate(images):
            pixels[i] = prepare_sam2_image(image, size)
        return _encode_tiles_sam2(self._graphdef, self._state, self._sharded(pixels))

    def _model_coords(self, xy: np.ndarray) -> np.ndarray:
        # Sam2ImagePredictor._transform_coords (normalize_coords=True), in its float32.
        coords = np.array(xy, dtype=np.float32)
        height, width = self.tile_shape
        coords[..., 0] = coords[..., 0] / np.float32(width)
        coords[..., 1] = coords[..., 1] / np.float32(height)
        return coords * np.float32(self.image_size)

    def _decode(self, embeddings, points, labels, boxes):
        return _decode_tiles_sam2(
            self._graphdef,
            self._state,
            embeddings,
            points,
            labels,
            boxes,
            self.multimask,
            self.tile_shape,
        )
