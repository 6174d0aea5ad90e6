"""COCO-style instance annotations: the one reading path every dataset shares.

`read_split` validates an annotation file against its images and returns the usable
images with their instances as compressed COCO RLE, plus one `Skip` per rejected entry.
Only a file that cannot be used at all (missing, not JSON, no `images`/`annotations` list)
raises `DataError`; every other problem rejects just the entry concerned and is reported,
so a build never stops half-way and never drops data without saying so.

Instances are class-agnostic: `category_id` is kept for reference only (HRSID uses id 0).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import PIL.Image
from pycocotools import mask as mask_utils

# A bbox may overshoot the image by this much (annotation tools round outwards) and is
# then clipped; anything further out means the box belongs to another image or frame.
BBOX_TOLERANCE_PX = 2.0

# Published files sometimes name images with another suffix than the released files
# (HRSID's JSON says .jpg for .png images); these are tried after the exact name.
ALTERNATE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


# PIL modes whose conversion to 8-bit RGB is lossless or standard (alpha is dropped).
RGB_CONVERTIBLE_MODES = frozenset(
    {"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"}
)


class DataError(Exception):
    """A dataset that cannot be built at all; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Skip:
    """One rejected entry: the file it lives in, which entry, and why."""

    file: str
    entry: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Instance:
    rle: bytes  # compressed COCO RLE counts, at the image's full resolution
    bbox: tuple[float, float, float, float]  # xyxy pixels, clipped to the image
    area: int  # mask pixel count
    annotation_id: int
    category_id: int


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    image_id: int
    path: Path
    file_name: str  # as written in the JSON
    height: int
    width: int
    instances: tuple[Instance, ...]


@dataclasses.dataclass(frozen=True)
class SplitContents:
    annotation_file: Path
    images: tuple[ImageRecord, ...]
    skipped: tuple[Skip, ...]

    @property
    def num_instances(self) -> int:
        return sum(len(image.instances) for image in self.images)

    def summary(self, max_examples_per_reason: int = 5) -> dict[str, Any]:
        """JSON-ready counts; skipped entries grouped by reason with a few examples."""
        by_reason: dict[str, list[Skip]] = collections.defaultdict(list)
        for skip in self.skipped:
            by_reason[_reason_kind(skip.reason)].append(skip)
        return {
            "annotation_file": str(self.annotation_file),
            "images": len(self.images),
            "instances": self.num_instances,
            "skipped": {
                "total": len(self.skipped),
                "by_reason": {
                    kind: {
                        "count": len(skips),
                        "examples": [
                            dataclasses.asdict(s) for s in skips[:max_examples_per_reason]
                        ],
                    }
                    for kind, skips in sorted(by_reason.items())
                },
            },
        }


def _reason_kind(reason: str) -> str:
    # Reasons are written "<kind>: <detail>" so they group without losing the detail.
    return reason.split(":", 1)[0]


def read_split(
    annotation_file: Path,
    image_dir: Path,
    *,
    excluded_image_ids: Iterable[int] = (),
    num_threads: int | None = None,
) -> SplitContents:
    """Validates `annotation_file` against the images in `image_dir`.

    Images listed in `excluded_image_ids` (known-bad files of a published release) and
    images left without any instance are skipped and reported like every other rejection.
    """
    data = load_coco_json(annotation_file)
    file = str(annotation_file)
    skips: list[Skip] = []

    images, excluded = _parse_images(data["images"], file, set(excluded_image_ids), skips)
    annotations = _parse_annotations(data["annotations"], images, excluded, file, skips)

    def load(image_id: int) -> tuple[ImageRecord | None, list[Skip]]:
        return _load_image(images[image_id], annotations.get(image_id, []), image_dir, file)

    # Image decoding dominates and PIL releases the GIL while decoding.
    with concurrent.futures.ThreadPoolExecutor(num_threads or os.cpu_count()) as pool:
        results = list(pool.map(load, images))
    records = []
    for record, image_skips in results:
        skips.extend(image_skips)
        if record is not None:
            records.append(record)
    return SplitContents(annotation_file, tuple(records), tuple(skips))


def load_coco_json(path: Path) -> dict[str, Any]:
    """A COCO file's top-level object, with 'images' and 'annotations' lists (else DataError)."""
    if not path.is_file():
        raise DataError(f"expected the annotation file {path}, but it does not exist")
    try:
        with path.open("rb") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not valid JSON: not UTF-8 text ({e.reason} at byte {e.start})"
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"{path}: expected a JSON object with 'images' and 'annotations', got {type(data).__name__}"
        )
    for field in ("images", "annotations"):
        if not isinstance(data.get(field), list):
            found = "missing" if field not in data else type(data[field]).__name__
            raise DataError(
                f"{path}: field '{field}' must be a list of COCO entries, found {found}"
            )
    return data


@dataclasses.dataclass(frozen=True)
class _ImageEntry:
    index: int
    image_id: int
    file_name: str
    height: int | None
    width: int | None

    @property
    def label(self) -> str:
        return f"images[{self.index}] (id {self.image_id}, {self.file_name})"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _parse_images(
    entries: list[Any], file: str, excluded_ids: set[int], skips: list[Skip]
) -> tuple[dict[int, _ImageEntry], dict[int, str]]:
    """Usable image entries by id, and the labels of the excluded ones by id."""
    images: dict[int, _ImageEntry] = {}
    excluded: dict[int, str] = {}
    for index, entry in enumerate(entries):
        label = f"images[{index}]"
        if not isinstance(entry, dict):
            skips.append(
                Skip(
                    file,
                    label,
                    f"malformed image entry: expected an object, got {type(entry).__name__}",
                )
            )
            continue
        image_id, file_name = entry.get("id"), entry.get("file_name")
        if not is_int(image_id):
            skips.append(
                Skip(
                    file, label, f"malformed image entry: 'id' must be an integer, got {image_id!r}"
                )
            )
            continue
        label = f"images[{index}] (id {image_id})"
        if not isinstance(file_name, str) or not file_name:
            skips.append(
                Skip(
                    file,
                    label,
                    f"malformed image entry: 'file_name' must be a non-empty string, got {file_name!r}",
                )
            )
            continue
        size = [entry.get("height"), entry.get("width")]
        # height/width are optional: the decoded file is authoritative when they are absent.
        if any(v is not None and not (is_int(v) and v > 0) for v in size):
            skips.append(
                Skip(
                    file,
                    label,
                    f"malformed image entry: 'height'/'width' must be positive integers, got {size}",
                )
            )
            continue
        if image_id in images:
            skips.append(
                Skip(
                    file,
                    label,
                    f"duplicate image id: {image_id} is already used by {images[image_id].label}",
                )
            )
            continue
        entry = _ImageEntry(index, image_id, file_name, size[0], size[1])
        if image_id in excluded_ids:
            skips.append(
                Skip(
                    file,
                    entry.label,
                    "known-bad image: excluded as in the published ReSAM/PointSAM code",
                )
            )
            excluded[image_id] = entry.label
            continue
        images[image_id] = entry
    return images, excluded


@dataclasses.dataclass(frozen=True)
class _Annotation:
    index: int
    annotation_id: int
    category_id: int
    segmentation: Any
    bbox: tuple[float, float, float, float] | None  # xywh as written

    @property
    def label(self) -> str:
        return f"annotations[{self.index}] (id {self.annotation_id})"


def _parse_annotations(
    entries: list[Any],
    images: Mapping[int, _ImageEntry],
    excluded: Mapping[int, str],
    file: str,
    skips: list[Skip],
) -> dict[int, list[_Annotation]]:
    """Structural checks that need no pixels; rasterising waits for the decoded image."""
    by_image: dict[int, list[_Annotation]] = collections.defaultdict(list)
    for index, entry in enumerate(entries):
        label = f"annotations[{index}]"
        if not isinstance(entry, dict):
            skips.append(
                Skip(
                    file,
                    label,
                    f"malformed annotation: expected an object, got {type(entry).__name__}",
                )
            )
            continue
        annotation_id = entry.get("id", index)
        label = f"annotations[{index}] (id {annotation_id})"
        image_id = entry.get("image_id")
        if image_id in excluded:
            skips.append(Skip(file, label, f"image skipped: {excluded[image_id]} was rejected"))
            continue
        if not is_int(image_id) or image_id not in images:
            skips.append(
                Skip(
                    file,
                    label,
                    f"missing image: 'image_id' {image_id!r} is not a usable entry of 'images'",
                )
            )
            continue
        if entry.get("iscrowd", 0):
            skips.append(
                Skip(
                    file,
                    label,
                    "crowd annotation: iscrowd=1 marks a region of many objects, not an instance",
                )
            )
            continue
        problem = segmentation_problem(entry.get("segmentation"))
        if problem:
            skips.append(Skip(file, label, f"bad segmentation: {problem}"))
            continue
        bbox = entry.get("bbox")
        if bbox is not None and not (
            isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))
        ):
            skips.append(
                Skip(
                    file,
                    label,
                    f"bad bbox: expected [x, y, width, height] of finite numbers, got {bbox!r}",
                )
            )
            continue
        category_id = entry.get("category_id", -1)
        by_image[image_id].append(
            _Annotation(
                index=index,
                annotation_id=annotation_id if is_int(annotation_id) else index,
                category_id=category_id if is_int(category_id) else -1,
                segmentation=entry["segmentation"],
                bbox=tuple(float(v) for v in bbox) if bbox is not None else None,
            )
        )
    return by_image


def segmentation_problem(segmentation: Any) -> str | None:
    """What makes a COCO segmentation unreadable (without the image size), or None."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "empty polygon list"
        for i, polygon in enumerate(segmentation):
            if not isinstance(polygon, list) or not all(map(is_number, polygon)):
                return f"polygon {i} must be a flat list of finite x, y numbers"
            if len(polygon) % 2:
                return f"polygon {i} has an odd number ({len(polygon)}) of coordinates"
            # pycocotools would read a 2-point polygon as a bbox, so this must be caught here.
            if len(polygon) < 6:
                return f"polygon {i} has {len(polygon) // 2} points; at least 3 are needed"
        return None
    if isinstance(segmentation, dict):
        counts, size = segmentation.get("counts"), segmentation.get("size")
        if not (
            isinstance(size, list) and len(size) == 2 and all(is_int(v) and v > 0 for v in size)
        ):
            return f"RLE 'size' must be [height, width], got {size!r}"
        if isinstance(counts, list):
            if not all(is_int(c) and c >= 0 for c in counts):
                return "uncompressed RLE 'counts' must be non-negative integers"
            if sum(counts) != size[0] * size[1]:
                return f"uncompressed RLE 'counts' sum to {sum(counts)}, expected height*width = {size[0] * size[1]}"
            return None
        if isinstance(counts, str) and counts.isascii():
            return None
        return "RLE 'counts' must be a list of run lengths or a compressed ASCII string"
    return f"expected a polygon list or an RLE object, got {type(segmentation).__name__}"


def _resolve_image_path(image_dir: Path, file_name: str) -> Path | None:
    path = image_dir / file_name
    if path.is_file():
        return path
    for suffix in ALTERNATE_SUFFIXES:
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    return None


def _load_image(
    entry: _ImageEntry, annotations: Sequence[_Annotation], image_dir: Path, file: str
) -> tuple[ImageRecord | None, list[Skip]]:
    def skip_image(reason: str) -> tuple[None, list[Skip]]:
        own = Skip(file, entry.label, reason)
        orphans = [
            Skip(file, a.label, f"image skipped: {entry.label} was rejected") for a in annotations
        ]
        return None, [own, *orphans]

    path = _resolve_image_path(image_dir, entry.file_name)
    if path is None:
        return skip_image(
            f"image file not found: {image_dir / entry.file_name} (also tried suffixes {', '.join(ALTERNATE_SUFFIXES)})"
        )
    try:
        with PIL.Image.open(path) as image:
            image.load()
            width, height = image.size
            mode = image.mode
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
        return skip_image(f"image does not decode: {path}: {e}")
    if mode not in RGB_CONVERTIBLE_MODES:
        # 16-bit and float rasters have no agreed 8-bit mapping; guessing one would corrupt the data.
        return skip_image(
            f"unsupported pixel format: {path} has PIL mode {mode}; convert it to 8-bit RGB or grey first"
        )
    if (entry.height, entry.width) != (None, None) and (entry.height, entry.width) != (
        height,
        width,
    ):
        return skip_image(
            f"image size mismatch: {path} is {height}x{width}, the JSON says {entry.height}x{entry.width}"
        )
    if not annotations:
        return skip_image("image has no instances: no annotation refers to it")

    skips, instances = [], []
    for annotation in annotations:
        instance, reason = _rasterise(annotation, height, width)
        if instance is None:
            skips.append(Skip(file, annotation.label, reason))
        else:
            instances.append(instance)
    if not instances:
        return None, [
            *skips,
            Skip(
                file,
                entry.label,
                f"image has no instances: all {len(annotations)} annotations were rejected",
            ),
        ]
    record = ImageRecord(entry.image_id, path, entry.file_name, height, width, tuple(instances))
    return record, skips


def _rasterise(annotation: _Annotation, height: int, width: int) -> tuple[Instance | None, str]:
    """The same RLE as pycocotools' `COCO.annToRLE`, plus the checks that need the image size."""
    segmentation = annotation.segmentation
    if isinstance(segmentation, dict):
        if list(segmentation["size"]) != [height, width]:
            return (
                None,
                f"bad segmentation: RLE size {segmentation['size']} differs from the image size [{height}, {width}]",
            )
        if isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": [height, width], "counts": segmentation["counts"].encode("ascii")}
    else:
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    area = int(mask_utils.area(rle))
    if area == 0:
        return None, "empty mask: the segmentation covers no pixel of the image"

    if annotation.bbox is None:
        x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
    else:
        x, y, w, h = annotation.bbox
    if w <= 0 or h <= 0:
        return None, f"bad bbox: width and height must be positive, got {list(annotation.bbox)}"
    overshoot = max(-x, -y, x + w - width, y + h - height)
    if overshoot > BBOX_TOLERANCE_PX:
        return None, (
            f"bbox outside the image: [{x}, {y}, {w}, {h}] (xywh) extends {overshoot:g} px beyond the "
            f"{width}x{height} image (tolerance {BBOX_TOLERANCE_PX:g} px)"
        )
    bbox = (max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height)))
    if bbox[2] <= bbox[0] or bbox[3] <= bbox[1]:
        return (
            None,
            f"bbox outside the image: [{x}, {y}, {w}, {h}] (xywh) has no extent inside the {width}x{height} image",
        )
    counts = rle["counts"]
    return Instance(
        rle=counts if isinstance(counts, bytes) else counts.encode("ascii"),
        bbox=bbox,
        area=area,
        annotation_id=annotation.annotation_id,
        category_id=annotation.category_id,
    ), ""
