"""Segment every image of a folder from COCO-style prompts and write COCO results.

    python -m resam_jax.predict --checkpoint CKPT --images DIR --prompts prompts.json \\
        --output results.json [--ground-truth instances.json]

The prompt file has COCO's layout, so a COCO instances file works as it is (its boxes become
the prompts):

    {"images": [{"id": 1, "file_name": "001.jpg"}, ...],
     "annotations": [
         {"id": 7, "image_id": 1, "bbox": [x, y, w, h]},
         {"id": 8, "image_id": 1, "point": [x, y]},
         {"id": 9, "image_id": 1, "points": [[x, y], [x, y]], "point_labels": [1, 0],
          "bbox": [x, y, w, h], "category_id": 3}]}

Each annotation is one prompt and gets one mask: its box ("bbox", COCO's [x, y, width,
height]) and/or its points ("point": one point; "points": several; "point_labels": 1 object,
0 background, all 1 when absent), in pixels of the original image. "category_id" (1 when
absent) is copied to the result. file_name is relative to DIR; an image's "width" and
"height", when given, must be the file's. Other fields (segmentation, area, ...) are ignored.
Every image is encoded once for all its prompts.

Results, what `pycocotools.coco.COCO.loadRes` reads: one entry per annotation,
    {"image_id", "category_id", "segmentation": RLE {"size": [H, W], "counts": str},
     "score": the predicted IoU, "prompt_id": the annotation's id}.

With `--ground-truth instances.json` each prompt's id must be the id of the ground-truth
annotation it prompts (as when the prompts are that file itself, or derived from it). The masks
written are scored against the GT masks per instance, averaged within each image and then over
images (docs/method.md section 5), at the original resolution with SAM's threshold (logits > 0);
training's evaluation thresholds logits at 0.5 on the 1024 frame, so the two differ slightly.

Every input is checked before the model is loaded; the results file is written under a
temporary name and renamed, so a failure leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from resam_jax.data.coco import (
    DataError,
    is_int,
    is_number,
    load_coco_json,
    segmentation_problem,
)
from resam_jax.files import staged
from resam_jax.inference.common import PredictError, check_inside, load_image


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One annotation's prompt, in pixels of the original image."""

    id: int
    category_id: int
    points: np.ndarray | None  # float32 [P, 2]
    labels: np.ndarray | None  # int32 [P]
    box: np.ndarray | None  # float32 [4]: x0, y0, x1, y1


@dataclasses.dataclass(frozen=True)
class ImagePrompts:
    id: int
    path: Path
    size: tuple[int, int]  # (height, width)
    prompts: tuple[Prompt, ...]


def _numbers(value: Any, length: int) -> list[float] | None:
    """`value` as `length` finite numbers, or None when it is not that."""
    if isinstance(value, list) and len(value) == length and all(map(is_number, value)):
        return [float(v) for v in value]
    return None


def _integer(entry: Mapping, name: str, where: str, default: int | None = None) -> int:
    value = entry.get(name, default)
    if not is_int(value):
        found = "missing" if name not in entry else repr(value)
        raise PredictError(f"{where}: field '{name}' must be an integer, got {found}")
    return value


def _box(entry: Mapping, where: str) -> np.ndarray | None:
    if "bbox" not in entry:
        return None
    xywh = _numbers(entry["bbox"], 4)
    if xywh is None or xywh[2] < 0 or xywh[3] < 0:
        raise PredictError(
            f"{where}: field 'bbox' must be [x, y, width, height] (4 numbers, width and height "
            f">= 0), got {entry['bbox']!r}"
        )
    x, y, w, h = xywh
    return np.array([x, y, x + w, y + h], np.float32)


def _points(entry: Mapping, where: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    if "point" in entry and "points" in entry:
        raise PredictError(f"{where}: give 'point' or 'points', not both")
    if "point" in entry:
        points = [_numbers(entry["point"], 2)]
        if points[0] is None:
            raise PredictError(f"{where}: field 'point' must be [x, y], got {entry['point']!r}")
    elif "points" in entry:
        raw = entry["points"]
        points = [_numbers(p, 2) for p in raw] if isinstance(raw, list) and raw else [None]
        if None in points:
            raise PredictError(
                f"{where}: field 'points' must be a non-empty list of [x, y], got {raw!r}"
            )
    elif "point_labels" in entry:
        raise PredictError(f"{where}: 'point_labels' without 'point' or 'points'")
    else:
        return None, None
    labels = entry.get("point_labels", [1] * len(points))
    if not (
        isinstance(labels, list)
        and len(labels) == len(points)
        and all(is_int(v) and v in (0, 1) for v in labels)
    ):
        raise PredictError(
            f"{where}: field 'point_labels' must list {len(points)} labels, 1 (object) or "
            f"0 (background), got {labels!r}"
        )
    return np.array(points, np.float32), np.array(labels, np.int32)


def parse_prompt(entry: Any, where: str) -> tuple[int, Prompt]:
    """(image id, prompt) of one annotation entry."""
    if not isinstance(entry, dict):
        raise PredictError(f"{where} must be an object, got {type(entry).__name__}")
    image_id = _integer(entry, "image_id", where)
    box = _box(entry, where)
    points, labels = _points(entry, where)
    if box is None and points is None:
        raise PredictError(f"{where} has no prompt: give 'bbox', 'point' or 'points'")
    prompt = Prompt(
        id=_integer(entry, "id", where),
        category_id=_integer(entry, "category_id", where, default=1),
        points=points,
        labels=labels,
        box=box,
    )
    return image_id, prompt


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as e:
        raise PredictError(f"cannot decode image {path}: {e}") from None
    return height, width


def _check_inside(prompt: Prompt, size: tuple[int, int], where: str, path: Path) -> None:
    named = [("point", p) for p in ([] if prompt.points is None else prompt.points)]
    if prompt.box is not None:
        named += [("bbox corner", prompt.box[:2]), ("bbox corner", prompt.box[2:])]
    check_inside(
        ((f"{where}: {what} ({x:g}, {y:g})", (x, y)) for what, (x, y) in named),
        size,
        f"the image {path} ({size[1]}x{size[0]} px)",
    )


def _read_images(entries: list, images_dir: Path, file: Path) -> dict[int, tuple[Path, dict]]:
    """id -> (path, entry) of every image entry, each checked for its fields."""
    images = {}
    for index, entry in enumerate(entries):
        where = f"{file}: images[{index}]"
        if not isinstance(entry, dict):
            raise PredictError(f"{where} must be an object, got {type(entry).__name__}")
        image_id = _integer(entry, "id", where)
        name = entry.get("file_name")
        if not isinstance(name, str) or not name:
            raise PredictError(f"{where}: field 'file_name' must be a file name, got {name!r}")
        if image_id in images:
            raise PredictError(f"{where}: image id {image_id} appears twice")
        images[image_id] = (images_dir / name, entry)
    return images


def read_prompts(prompts_file: Path, images_dir: Path) -> list[ImagePrompts]:
    """The images that have prompts, in the file's order, every prompt checked against its image."""
    if not images_dir.is_dir():
        raise PredictError(f"--images {images_dir} is not a folder")
    try:
        data = load_coco_json(prompts_file)
    except DataError as e:
        raise PredictError(str(e)) from None
    images = _read_images(data["images"], images_dir, prompts_file)
    prompts: dict[int, list[tuple[str, Prompt]]] = {}
    seen: set[int] = set()
    for index, entry in enumerate(data["annotations"]):
        where = f"{prompts_file}: annotations[{index}]"
        image_id, prompt = parse_prompt(entry, where)
        if image_id not in images:
            raise PredictError(f"{where}: image_id {image_id} is not in 'images'")
        if prompt.id in seen:
            raise PredictError(f"{where}: annotation id {prompt.id} appears twice")
        seen.add(prompt.id)
        prompts.setdefault(image_id, []).append((f"{where} (id {prompt.id})", prompt))
    if not prompts:
        raise PredictError(f"{prompts_file}: field 'annotations' holds no prompt")

    result = []
    for image_id, (path, entry) in images.items():
        if image_id not in prompts:
            continue
        if not path.is_file():
            raise PredictError(
                f"{prompts_file}: image id {image_id}: file_name {entry['file_name']!r} is not in "
                f"{images_dir} ({path} does not exist)"
            )
        size = _image_size(path)
        declared = (entry.get("height"), entry.get("width"))
        if declared != (None, None) and declared != size:
            raise PredictError(
                f"{prompts_file}: image id {image_id}: {path} is {size[1]}x{size[0]} px, the file "
                f"says width {declared[1]}, height {declared[0]}"
            )
        for where, prompt in prompts[image_id]:
            _check_inside(prompt, size, where, path)
        result.append(ImagePrompts(image_id, path, size, tuple(p for _, p in prompts[image_id])))
    return result


def coco_result(image_id: int, prompt: Prompt, mask: np.ndarray, score: float) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "image_id": image_id,
        "category_id": prompt.category_id,
        "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()},
        "score": float(score),
        "prompt_id": prompt.id,
    }


def predict_images(predictor, images: Sequence[ImagePrompts], multimask: bool) -> list[dict]:
    """COCO results of every prompt; each image is encoded once. With `multimask` the best of
    SAM's three masks by predicted IoU is kept."""
    results = []
    for count, image in enumerate(images, 1):
        predictor.set_image(load_image(image.path))
        for prompt in image.prompts:
            masks, iou, _ = predictor.predict(
                prompt.points, prompt.labels, prompt.box, multimask_output=multimask
            )
            best = int(np.argmax(iou))
            mask = np.asarray(masks[best], bool)  # SAM 2's predictor: 0 / 1 floats
            results.append(coco_result(image.id, prompt, mask, iou[best]))
        print(f"[{count}/{len(images)}] {image.path.name}: {len(image.prompts)} mask(s)")
    return results


def _quiet_coco(dataset: dict):
    """pycocotools' COCO index of `dataset`, without its progress prints."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def read_ground_truth(path: Path, images: Sequence[ImagePrompts]):
    """The GT file as a pycocotools COCO, checked to hold every prompt's annotation, on the
    prompt's image, at the image's size, with a readable mask."""
    try:
        ground_truth = _quiet_coco(load_coco_json(path))
    except DataError as e:
        raise PredictError(str(e)) from None
    for image in images:
        gt_image = ground_truth.imgs.get(image.id)
        if gt_image is None or (gt_image.get("height"), gt_image.get("width")) != image.size:
            found = (
                "missing"
                if gt_image is None
                else f"{gt_image.get('width')}x{gt_image.get('height')}"
            )
            raise PredictError(
                f"{path}: image id {image.id} should be {image.path.name}, "
                f"{image.size[1]}x{image.size[0]} px (width x height), found {found}"
            )
        for prompt in image.prompts:
            annotation = ground_truth.anns.get(prompt.id)
            if annotation is None or annotation.get("image_id") != image.id:
                raise PredictError(
                    f"{path}: no annotation with id {prompt.id} on image id {image.id}; with "
                    "--ground-truth each prompt's id must be the id of the GT annotation it prompts"
                )
            if problem := segmentation_problem(annotation.get("segmentation")):
                raise PredictError(
                    f"{path}: annotation id {prompt.id}: field 'segmentation': {problem}"
                )
    return ground_truth


def score_results(ground_truth, results: Sequence[dict]) -> dict[str, float]:
    """Per-instance IoU/F1/precision/recall of the result masks against the GT masks, averaged
    within each image and then over images (docs/method.md section 5)."""
    from resam_jax.method.metrics import ImageAveragedScores, confusion_counts

    scores = ImageAveragedScores("per_instance")
    by_image: dict[int, list[dict]] = {}
    for result in results:
        by_image.setdefault(result["image_id"], []).append(result)
    for image_id, entries in by_image.items():
        predicted = np.stack([mask_utils.decode(r["segmentation"]) for r in entries]) > 0
        target = (
            np.stack([ground_truth.annToMask(ground_truth.anns[r["prompt_id"]]) for r in entries])
            > 0
        )
        valid = np.ones((1, len(entries)), bool)
        counts = confusion_counts(predicted[None], target[None], valid)
        scores.update(np.asarray(counts), valid, np.array([image_id]))
    return {**scores.result(), "images": scores.num_images}


def write_json(path: Path, value: Any) -> None:
    """`value` as JSON at `path`, written under a temporary name and renamed."""
    with staged(path) as staging:
        staging.write_text(json.dumps(value))
