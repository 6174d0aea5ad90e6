"""One training or evaluation sample: geometry, weak/strong views and point prompts.

Frames: the source image is resized so its longest side is S (SAM's ResizeLongestSide), giving
the *content* frame (newh x neww); the content is then placed in the S x S *padded* frame at
`pad_offset`. Flips act on the content frame, so padding stays where the config puts it.
The strong view is the weak view's geometry with photometric augmentations, applied (as the
public code does) to the flipped image at its original resolution before the resize, or after
it (`strong_before_resize=False`).

Masks are resized nearest-neighbour with pixel-centre sampling (source index
floor((i + 0.5) * src / dst), PIL's NEAREST): exact, cheap on crops, and it keeps masks
binary. (The public code resizes {0,1} masks with PIL bilinear, which agrees except along
mask boundaries.) Each instance is handled as a tight crop of its mask, so per-instance
work scales with the object, not with the S x S frame.

Points are integer pixel indices (x = column, y = row) in the padded frame, as SAM's
prompt encoder expects (it adds the half-pixel shift itself). Negative points fall anywhere in
the padded frame outside the instance, padding included, as in the public code
(`negative_points="frame"`), or inside the image content only ("content").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from resam_jax.data import corruptions, photometric
from resam_jax.data.config import Pad, ViewConfig
from resam_jax.transforms import preprocess_shape, resize_image


def pad_offset(resized: tuple[int, int], size: int, pad: Pad) -> tuple[int, int]:
    """(top, left) of the content: centred as the public ReSAM code (extra pixel bottom/right), or SAM's top-left."""
    if pad == "center":
        return (size - resized[0]) // 2, (size - resized[1]) // 2
    if pad == "bottom_right":
        return 0, 0
    raise ValueError(f"pad must be 'center' or 'bottom_right', got {pad!r}")


def nearest_source_indices(source: int, target: int) -> np.ndarray:
    """For each target pixel, the source pixel whose area holds its centre (integer arithmetic)."""
    return (2 * np.arange(target, dtype=np.int64) + 1) * source // (2 * target)


@dataclasses.dataclass(frozen=True)
class MaskCrop:
    """A binary mask as its bounding crop: `mask` sits at (top, left) of the frame."""

    top: int
    left: int
    mask: np.ndarray  # bool [h, w], at least one True pixel

    def flipped(self, frame: tuple[int, int], horizontal: bool, vertical: bool) -> MaskCrop:
        top, left, mask = self.top, self.left, self.mask
        if horizontal:
            left, mask = frame[1] - left - mask.shape[1], mask[:, ::-1]
        if vertical:
            top, mask = frame[0] - top - mask.shape[0], mask[::-1]
        return MaskCrop(top, left, mask)


def resize_rle_masks(
    rles: Sequence[bytes], source: tuple[int, int], target: tuple[int, int]
) -> list[MaskCrop]:
    """Decodes compressed COCO RLEs at `source` size and resizes them nearest to `target`.

    An object too thin to survive the downscale keeps the one target pixel its first source
    pixel maps to: every instance stays promptable and nothing is dropped silently.
    """
    rows = nearest_source_indices(source[0], target[0])
    cols = nearest_source_indices(source[1], target[1])
    crops = []
    for rle in rles:
        encoded = {"size": list(source), "counts": rle}
        x, y, w, h = (int(v) for v in mask_utils.toBbox(encoded))
        full = mask_utils.decode(encoded)
        # rows/cols are sorted, so the target pixels sampling inside the bbox form one range.
        r0, r1 = np.searchsorted(rows, [y, y + h])
        c0, c1 = np.searchsorted(cols, [x, x + w])
        crop = full[np.ix_(rows[r0:r1], cols[c0:c1])].astype(bool)
        if crop.any():
            crops.append(MaskCrop(int(r0), int(c0), crop))
            continue
        sy, sx = np.argwhere(full[y : y + h, x : x + w])[0] + (y, x)
        ty = min((2 * sy + 1) * target[0] // (2 * source[0]), target[0] - 1)
        tx = min((2 * sx + 1) * target[1] // (2 * source[1]), target[1] - 1)
        crops.append(MaskCrop(int(ty), int(tx), np.ones((1, 1), bool)))
    return crops


def sample_flip(rng: np.random.Generator, probability: float) -> tuple[bool, bool]:
    """albumentations Flip: with `probability`, d in {-1: both, 0: vertical, 1: horizontal}."""
    if rng.random() >= probability:
        return False, False
    d = int(rng.integers(-1, 2))
    return d in (-1, 1), d in (-1, 0)


def flip_boxes(
    boxes: np.ndarray, frame: tuple[int, int], horizontal: bool, vertical: bool
) -> np.ndarray:
    boxes = boxes.copy()
    if horizontal:
        boxes[:, [0, 2]] = frame[1] - boxes[:, [2, 0]]
    if vertical:
        boxes[:, [1, 3]] = frame[0] - boxes[:, [3, 1]]
    return boxes


def sample_points(
    crop: MaskCrop,
    region: tuple[int, int, int, int],
    num_points: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """`num_points` positives uniform in the mask, then `num_points` negatives uniform over
    `region` = (top, left, height, width) outside the mask; xy [2n, 2] and labels [2n]
    (1, 0; -1 where the region leaves no outside). `crop` and `region` share one frame."""
    ys, xs = np.nonzero(crop.mask)
    pick = rng.choice(len(ys), size=num_points, replace=len(ys) < num_points)
    positives = np.stack([xs[pick] + crop.left, ys[pick] + crop.top], axis=1)
    negatives, found = _sample_outside(crop, region, num_points, rng)
    points = np.concatenate([positives, negatives]).astype(np.float32)
    labels = np.concatenate(
        [np.ones(num_points, np.int32), np.where(np.arange(num_points) < found, 0, -1)]
    )
    return points, labels.astype(np.int32)


def _sample_outside(
    crop: MaskCrop, region: tuple[int, int, int, int], n: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    top, left, height, width = region
    # Rejection sampling is exact and fast while the object covers little of the region.
    accepted = np.zeros((0, 2), np.int64)
    for _ in range(8):
        xy = np.stack(
            [rng.integers(left, left + width, 4 * n), rng.integers(top, top + height, 4 * n)],
            axis=1,
        )
        accepted = np.concatenate([accepted, xy[~_inside(crop, xy)]])[:n]
        if len(accepted) == n:
            return accepted, n
    # The object fills most of the region: draw from its outside pixels directly.
    columns, rows = np.meshgrid(np.arange(left, left + width), np.arange(top, top + height))
    grid = np.stack([columns.ravel(), rows.ravel()], axis=1)
    outside = grid[~_inside(crop, grid)]
    if len(outside) == 0:
        return np.zeros((n, 2), np.int64), 0
    return outside[rng.choice(len(outside), size=n, replace=len(outside) < n)], n


def _inside(crop: MaskCrop, xy: np.ndarray) -> np.ndarray:
    h, w = crop.mask.shape
    col, row = xy[:, 0] - crop.left, xy[:, 1] - crop.top
    inside = (row >= 0) & (row < h) & (col >= 0) & (col < w)
    hit = np.zeros(len(xy), bool)
    hit[inside] = crop.mask[row[inside], col[inside]]
    return hit


def make_sample(
    image: np.ndarray,
    rles: Sequence[bytes],
    boxes: np.ndarray,
    image_id: int,
    *,
    config: ViewConfig,
    rng: np.random.Generator,
    augment: bool,
) -> dict[str, Any]:
    """One sample of the batch contract (without the leading batch dimension), except that
    the instance masks are `mask_crops` (one `MaskCrop` per valid slot, padded frame):
    dense [N, S, S] masks are mostly zeros, so they are made only at the end (`paste_masks`).

    `rles`/`boxes` (xyxy, source pixels) are the instances of this sample, at most
    `config.max_instances`. Without `augment` there is no flip and strong == weak.
    With `config.corruption`, the image is corrupted first, at its original resolution, seeded
    by `image_id` (train and eval alike); masks, boxes and points do not change.
    """
    size, n_pts = config.image_size, config.num_points
    if len(rles) > config.max_instances:
        raise ValueError(
            f"{len(rles)} instances exceed max_instances={config.max_instances}; chunk the image first"
        )
    if config.corruption:
        image = corruptions.corrupt(image, config.corruption, config.corruption_severity, image_id)
    height, width = image.shape[:2]
    resized = preprocess_shape(height, width, size)
    top, left = pad_offset(resized, size, config.pad)

    weak = resize_image(image, resized)
    crops = resize_rle_masks(rles, (height, width), resized)
    # SAM's apply_coords: x * neww / w, y * newh / h.
    scaled = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32(
        [resized[1] / width, resized[0] / height] * 2
    )
    if augment:
        horizontal, vertical = sample_flip(rng, config.flip_probability)
        flip = (
            slice(None, None, -1 if vertical else 1),
            slice(None, None, -1 if horizontal else 1),
        )
        weak = np.ascontiguousarray(weak[flip])
        crops = [c.flipped(resized, horizontal, vertical) for c in crops]
        scaled = flip_boxes(scaled, resized, horizontal, vertical)
        if config.strong_before_resize:
            # The public order: flip and augment at the original resolution, then resize.
            original = np.ascontiguousarray(image[flip])
            strong = photometric.strong_augment(original, rng, config.strong_probability)
            strong = resize_image(strong, resized)
        else:
            strong = photometric.strong_augment(weak, rng, config.strong_probability)
    else:
        strong = weak

    sample = empty_sample(config)
    content = (slice(top, top + resized[0]), slice(left, left + resized[1]))
    sample["weak_image"][content] = weak
    sample["strong_image"][content] = strong
    sample["content_mask"][content] = True
    offset = np.float32([left, top])
    crops = [MaskCrop(c.top + top, c.left + left, c.mask) for c in crops]  # the padded frame
    if config.negative_points == "frame":
        region = (0, 0, size, size)
    else:
        region = (top, left, *resized)
    for i, crop in enumerate(crops):
        sample["points"][i], sample["point_labels"][i] = sample_points(crop, region, n_pts, rng)
    k = len(crops)
    sample["mask_crops"] = tuple(crops)
    sample["boxes"][:k] = scaled + np.tile(offset, 2)
    sample["instance_valid"][:k] = True
    sample["image_id"][()] = image_id
    sample["original_size"][:] = (height, width)
    sample["resized_size"][:] = resized
    sample["pad_offset"][:] = (top, left)
    return sample


def empty_sample(config: ViewConfig) -> dict[str, Any]:
    """A sample with no content and no valid instance; also pads the last evaluation batch."""
    size, n_max, n_pts = config.image_size, config.max_instances, config.num_points
    return {
        "weak_image": np.zeros((size, size, 3), np.uint8),
        "strong_image": np.zeros((size, size, 3), np.uint8),
        "content_mask": np.zeros((size, size), bool),
        "mask_crops": (),
        "boxes": np.zeros((n_max, 4), np.float32),
        "points": np.zeros((n_max, 2 * n_pts, 2), np.float32),
        "point_labels": np.full((n_max, 2 * n_pts), -1, np.int32),
        "instance_valid": np.zeros((n_max,), bool),
        "image_id": np.array(-1, np.int32),
        "original_size": np.zeros((2,), np.int32),
        "resized_size": np.zeros((2,), np.int32),
        "pad_offset": np.zeros((2,), np.int32),
    }


def stack_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batches samples; mask crops stay per-sample lists (small to hand between processes)."""
    batch = {key: np.stack([s[key] for s in samples]) for key in samples[0] if key != "mask_crops"}
    batch["mask_crops"] = [s["mask_crops"] for s in samples]
    return batch


def paste_masks(batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The batch contract: `mask_crops` become dense masks [B, N, S, S] (False where no instance)."""
    dense = {key: value for key, value in batch.items() if key != "mask_crops"}
    num_slots, size = batch["boxes"].shape[1], batch["content_mask"].shape[1]
    masks = np.zeros((len(batch["mask_crops"]), num_slots, size, size), bool)
    for b, crops in enumerate(batch["mask_crops"]):
        for i, crop in enumerate(crops):
            h, w = crop.mask.shape
            masks[b, i, crop.top : crop.top + h, crop.left : crop.left + w] = crop.mask
    dense["masks"] = masks
    return dense
