"""Segment everything: SAM prompted by a grid of points over the image (and over crops of it),
masks kept by predicted IoU and stability score and deduplicated by box NMS, with the options,
filters and outputs of segment_anything's SamAutomaticMaskGenerator. The grid is decoded in
batches of a fixed size on device; filtering and NMS run on the host on the few numbers per mask.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pycocotools import mask as mask_utils

from resam_jax.inference.predictor import SamPredictor
from resam_jax.models.sam import Sam, postprocess_masks
from resam_jax.transforms import scale_coords

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# A mask whose box comes this close (pixels) to a crop border inside the image is cut by it.
CROP_EDGE_TOLERANCE = 20.0


def point_grid(points_per_side: int) -> np.ndarray:
    """[n * n, 2] (x, y) points evenly spaced in [0, 1]^2, half a step from the borders, row by row."""
    offset = 1 / (2 * points_per_side)
    side = np.linspace(offset, 1 - offset, points_per_side)
    xs, ys = np.meshgrid(side, side)
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def crop_boxes(
    size: tuple[int, int], crop_n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """The whole image, then (2^i)^2 overlapping crops in layer i = 1..crop_n_layers, as xyxy
    pixel boxes with their layer; crops overlap by overlap_ratio of the short side in layer 1,
    less in later layers."""
    height, width = size
    boxes, layers = [[0, 0, width, height]], [0]
    for layer in range(1, crop_n_layers + 1):
        per_side = 2**layer
        overlap = int(overlap_ratio * min(height, width) * (2 / per_side))
        crop_w = math.ceil((overlap * (per_side - 1) + width) / per_side)
        crop_h = math.ceil((overlap * (per_side - 1) + height) / per_side)
        for i in range(per_side):  # x-major, as the reference orders its crops
            for j in range(per_side):
                x0, y0 = int((crop_w - overlap) * i), int((crop_h - overlap) * j)
                boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
                layers.append(layer)
    return boxes, layers


def box_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the boxes [N, 4] (xyxy) kept by greedy NMS, best score first: a box is dropped
    when its IoU with a kept better one exceeds `threshold`. torchvision.ops.nms's arithmetic
    (float32 boxes, area (x1 - x0) * (y1 - y0), ties in the order given)."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    x0, y0, x1, y1 = np.asarray(boxes, np.float32)[order].T
    area = (x1 - x0) * (y1 - y0)
    suppressed = np.zeros(len(order), bool)
    kept = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(i)
        rest = slice(i + 1, None)
        w = np.maximum(np.float32(0), np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        h = np.maximum(np.float32(0), np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):  # two empty boxes: NaN, kept
            overlap = inter / (area[i] + area[rest] - inter)
        suppressed[rest] |= overlap.astype(np.float64) > threshold
    return order[np.asarray(kept, int)]


def near_crop_edge(
    boxes: np.ndarray, crop_box: Sequence[int], image_box: Sequence[int]
) -> np.ndarray:
    """[N] whether each box (xyxy, image frame) lies within CROP_EDGE_TOLERANCE of a border of
    its crop that is not a border of the image: the crop cut that mask."""
    boxes = np.asarray(boxes, np.float32)
    near_crop = np.abs(boxes - np.asarray(crop_box, np.float32)) <= CROP_EDGE_TOLERANCE
    near_image = np.abs(boxes - np.asarray(image_box, np.float32)) <= CROP_EDGE_TOLERANCE
    return (near_crop & ~near_image).any(axis=1)


def mask_boxes(masks: jax.Array) -> jax.Array:
    """Bool masks [..., H, W] -> int32 [..., 4] xyxy boxes of inclusive pixel indices; zeros
    for an empty mask."""
    height, width = masks.shape[-2:]
    rows, cols = masks.any(axis=-1), masks.any(axis=-2)
    y0, x0 = jnp.argmax(rows, axis=-1), jnp.argmax(cols, axis=-1)
    y1 = height - 1 - jnp.argmax(rows[..., ::-1], axis=-1)
    x1 = width - 1 - jnp.argmax(cols[..., ::-1], axis=-1)
    boxes = jnp.stack([x0, y0, x1, y1], axis=-1).astype(jnp.int32)
    return jnp.where(rows.any(axis=-1)[..., None], boxes, 0)


def stability_score(logits: jax.Array, threshold: float, offset: float) -> jax.Array:
    """IoU of the masks [..., H, W] binarised at threshold + offset and at threshold - offset
    (the first lies inside the second); NaN for a mask empty at both."""
    logits = jnp.asarray(logits)
    inner = (logits > threshold + offset).sum(axis=(-2, -1), dtype=jnp.int32)
    outer = (logits > threshold - offset).sum(axis=(-2, -1), dtype=jnp.int32)
    return inner / outer


@functools.partial(jax.jit, static_argnums=(0, 4))
def _decode_grid(graphdef, state, embedding, points, sizes, offset):
    """Points [B, 2] (input frame, each a one-point positive prompt) -> per candidate mask
    (B x 3, point-major): predicted IoU, stability score, box, and the bool mask [B*3, H, W]
    in the crop's pixels; `sizes` is SAM's (image_size, input_size, original_size)."""
    model = nnx.merge(graphdef, state)
    count = points.shape[0]
    labels = jnp.ones((1, count, 1), jnp.int32)
    low_res, iou = model.decode(embedding, points[None, :, None], labels, None, None, True)
    logits = postprocess_masks(low_res[0], *sizes)
    logits = logits.reshape(-1, *logits.shape[-2:])
    masks = logits > Sam.mask_threshold
    stability = stability_score(logits, Sam.mask_threshold, offset)
    return iou.reshape(-1), stability, mask_boxes(masks), masks


@jax.jit
def _take(masks, indices):
    return masks[indices]


def remove_small_regions(mask: np.ndarray, min_area: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill the holes ("holes") or drop the islands ("islands") of a bool mask smaller than
    min_area pixels (8-connected regions; when every island is small the largest stays).
    Returns the mask and whether it changed."""
    from scipy import ndimage

    fill_holes = mode == "holes"
    regions, count = ndimage.label(mask ^ fill_holes, structure=np.ones((3, 3), bool))
    sizes = np.bincount(regions.ravel(), minlength=count + 1)[1:]
    small = np.flatnonzero(sizes < min_area) + 1
    if not len(small):
        return mask, False
    if fill_holes:
        return mask | np.isin(regions, small), True
    large = np.setdiff1d(np.arange(1, count + 1), small)
    if not len(large):
        large = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, large), True


def encode_rles(masks: np.ndarray) -> list[dict]:
    """Bool masks [N, H, W] -> COCO RLEs (pycocotools' compressed form)."""
    if not len(masks):
        return []
    return mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))


def uncompressed_rle(mask: np.ndarray) -> dict:
    """A bool mask [H, W] -> {"size": [H, W], "counts": [...]}: run lengths down the columns,
    starting with a run of zeros (empty when the first pixel is set)."""
    flat = mask.T.ravel()
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + counts}


@dataclasses.dataclass
class MaskSet:
    """Candidate masks: each as a COCO RLE in its crop's pixels, with the rest in the image's."""

    rles: list[dict]
    boxes: np.ndarray  # [N, 4] int xyxy (inclusive pixel indices)
    predicted_iou: np.ndarray  # [N] float32
    stability_score: np.ndarray  # [N] float32
    points: np.ndarray  # [N, 2] the (x, y) prompt point
    crop_boxes: np.ndarray  # [N, 4] int xyxy of the crop that segmented the mask

    def __len__(self) -> int:
        return len(self.rles)

    def take(self, indices: np.ndarray) -> MaskSet:
        return MaskSet(
            [self.rles[i] for i in indices],
            *(getattr(self, f.name)[indices] for f in dataclasses.fields(self)[1:]),
        )

    @staticmethod
    def concat(sets: Sequence[MaskSet]) -> MaskSet:
        return MaskSet(
            [rle for s in sets for rle in s.rles],
            *(
                np.concatenate([getattr(s, f.name) for s in sets])
                for f in dataclasses.fields(MaskSet)[1:]
            ),
        )

    @staticmethod
    def empty() -> MaskSet:
        zeros = np.zeros((0, 4), int)
        return MaskSet(
            [], zeros, np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros((0, 2)), zeros
        )

    def mask(self, index: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Mask `index` as bool [H, W]: in its crop's pixels, or placed in an image of `size`."""
        crop = mask_utils.decode(self.rles[index]).astype(bool)
        if size is None:
            return crop
        x0, y0 = self.crop_boxes[index][:2]
        full = np.zeros(size, bool)
        full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return full


class SamAutomaticMaskGenerator:
    """segment_anything.SamAutomaticMaskGenerator for our SAM: `generate(image)` returns its
    records (segmentation, area, bbox, predicted_iou, point_coords, stability_score, crop_box).

    The options and their defaults are the reference's (chosen there for ViT-H); `pixel_norm`
    is the pixel input the weights expect (SamPredictor). Explicit point grids are not offered.
    """

    def __init__(
        self,
        model: Sam,
        pixel_norm: str = "sam",
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ):
        check_options(
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            crop_n_layers=crop_n_layers,
            crop_n_points_downscale_factor=crop_n_points_downscale_factor,
            min_mask_region_area=min_mask_region_area,
            output_mode=output_mode,
        )
        self.predictor = SamPredictor(model, pixel_norm)
        self.point_grids = [
            point_grid(int(points_per_side / crop_n_points_downscale_factor**layer))
            for layer in range(crop_n_layers + 1)
        ]
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode

    def generate(self, image: np.ndarray) -> list[dict]:
        """uint8 RGB [H, W, 3] -> one record per mask, best first (see the class docstring);
        `segmentation` as output_mode says, boxes xywh."""
        size = tuple(image.shape[:2])
        masks = self.generate_masks(image)
        records = []
        for i in range(len(masks)):
            segmentation = self.segmentation(masks, i, size)
            x0, y0, x1, y1 = (int(v) for v in masks.boxes[i])
            cx0, cy0, cx1, cy1 = (int(v) for v in masks.crop_boxes[i])
            records.append(
                {
                    "segmentation": segmentation,
                    "area": int(mask_utils.area(masks.rles[i])),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(masks.predicted_iou[i]),
                    "point_coords": [masks.points[i].tolist()],
                    "stability_score": float(masks.stability_score[i]),
                    "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
                }
            )
        return records

    def segmentation(self, masks: MaskSet, index: int, size: tuple[int, int]):
        """Mask `index` of `masks` in an image of `size`, in the output mode."""
        whole = tuple(masks.crop_boxes[index]) == (0, 0, size[1], size[0])
        if self.output_mode == "coco_rle":
            rle = masks.rles[index] if whole else encode_rles(masks.mask(index, size)[None])[0]
            return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
        mask = masks.mask(index, size)
        return mask if self.output_mode == "binary_mask" else uncompressed_rle(mask)

    def generate_masks(self, image: np.ndarray) -> MaskSet:
        """Every crop's masks, duplicates across crops removed (the smaller crop's kept), small
        regions removed if asked."""
        size = tuple(image.shape[:2])
        boxes, layers = crop_boxes(size, self.crop_n_layers, self.crop_overlap_ratio)
        found = []
        for (x0, y0, x1, y1), layer in zip(boxes, layers):
            found.append(self.crop_masks(image[y0:y1, x0:x1], (x0, y0, x1, y1), layer, size))
        masks = MaskSet.concat(found)
        if len(boxes) > 1:
            crops = masks.crop_boxes
            area = ((crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])).astype(np.float32)
            masks = masks.take(box_nms(masks.boxes, np.float32(1) / area, self.crop_nms_thresh))
        if self.min_mask_region_area > 0:
            masks = self.remove_small_regions(masks)
        return masks

    def crop_masks(
        self, crop: np.ndarray, crop_box: Sequence[int], layer: int, image_size: tuple[int, int]
    ) -> MaskSet:
        """The masks of one crop (uint8 [h, w, 3], at `crop_box` xyxy in an image of
        `image_size` (H, W)) prompted by the layer's point grid, kept by predicted IoU,
        stability and distance to the crop's inner borders, deduplicated by box NMS."""
        predictor = self.predictor
        predictor.set_image(crop)
        crop_size = tuple(crop.shape[:2])
        sizes = (predictor.image_size, predictor.input_size, crop_size)
        points = self.point_grids[layer] * np.array(crop_size[::-1])
        image_box = (0, 0, image_size[1], image_size[0])
        offset = np.array(crop_box[:2])
        found = []
        for start in range(0, len(points), self.points_per_batch):
            batch = points[start : start + self.points_per_batch]
            padded = np.resize(batch, (self.points_per_batch, 2))  # static shape: repeats
            scaled = scale_coords(padded, crop_size, predictor.image_size).astype(np.float32)
            iou, stability, boxes, masks = _decode_grid(
                predictor._graphdef,
                predictor._state,
                predictor.features,
                jnp.asarray(scaled),
                sizes,
                self.stability_score_offset,
            )
            iou, stability = np.asarray(iou), np.asarray(stability)
            boxes = np.asarray(boxes) + np.tile(offset, 2)
            keep = np.arange(len(iou)) < 3 * len(batch)
            if self.pred_iou_thresh > 0:
                keep &= iou > np.float32(self.pred_iou_thresh)
            if self.stability_score_thresh > 0:
                keep &= stability >= np.float32(self.stability_score_thresh)
            keep &= ~near_crop_edge(boxes, crop_box, image_box)
            kept = np.flatnonzero(keep)
            if not len(kept):
                continue
            bucket = 1 << (len(kept) - 1).bit_length()  # few shapes to compile
            taken = np.asarray(_take(masks, jnp.asarray(np.resize(kept, bucket))))[: len(kept)]
            found.append(
                MaskSet(
                    encode_rles(taken),
                    boxes[kept],
                    iou[kept],
                    stability[kept],
                    np.repeat(batch, 3, axis=0)[kept] + offset,
                    np.tile(np.asarray(crop_box), (len(kept), 1)),
                )
            )
        predictor.reset_image()
        masks = MaskSet.concat(found) if found else MaskSet.empty()
        return masks.take(box_nms(masks.boxes, masks.predicted_iou, self.box_nms_thresh))

    def remove_small_regions(self, masks: MaskSet) -> MaskSet:
        """Holes and islands under min_mask_region_area removed from every mask, then box NMS
        again (at the larger of the two NMS thresholds) preferring the masks left unchanged."""
        if not len(masks):
            return masks
        cleaned, unchanged = [], []
        for i in range(len(masks)):
            mask, holes = remove_small_regions(masks.mask(i), self.min_mask_region_area, "holes")
            mask, islands = remove_small_regions(mask, self.min_mask_region_area, "islands")
            cleaned.append(mask)
            unchanged.append(not (holes or islands))
        boxes = np.stack(
            [
                np.asarray(mask_boxes(m)) + np.tile(c[:2], 2)
                for m, c in zip(cleaned, masks.crop_boxes)
            ]
        )
        keep = box_nms(
            boxes,
            np.asarray(unchanged, np.float32),
            max(self.box_nms_thresh, self.crop_nms_thresh),
        )
        for i in keep:
            if not unchanged[i]:
                masks.rles[i] = encode_rles(cleaned[i][None])[0]
                masks.boxes[i] = boxes[i]
        return masks.take(keep)


def check_options(
    points_per_side: int = 32,
    points_per_batch: int = 64,
    crop_n_layers: int = 0,
    crop_n_points_downscale_factor: int = 1,
    min_mask_region_area: int = 0,
    output_mode: str = "binary_mask",
    **thresholds: float,
) -> None:
    """A ValueError naming the option for a value the generator cannot take (the thresholds
    take any number)."""
    for name, value, least in (
        ("points_per_side", points_per_side, 1),
        ("points_per_batch", points_per_batch, 1),
        ("crop_n_layers", crop_n_layers, 0),
        ("crop_n_points_downscale_factor", crop_n_points_downscale_factor, 1),
        ("min_mask_region_area", min_mask_region_area, 0),
    ):
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    if int(points_per_side / crop_n_points_downscale_factor**crop_n_layers) < 1:
        raise ValueError(
            f"points_per_side {points_per_side} / crop_n_points_downscale_factor "
            f"{crop_n_points_downscale_factor}^{crop_n_layers} leaves no point in the last crop layer"
        )
    if output_mode not in OUTPUT_MODES:
        raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
