"""Synthetic releases in the published on-disk layouts, for the data tests.

Images are small (tens of pixels) so building and loading them is fast; instances are
polygons (rectangles and triangles) unless a test adds other annotations itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class ImageSpec:
    image_id: int
    height: int
    width: int
    # One polygon instance per (x0, y0, x1, y1): a rectangle, or the triangle inside it when odd.
    objects: Sequence[tuple[float, float, float, float]] = ()
    file_name: str = ""  # as written in the JSON; default "<id>.jpg"
    disk_name: str = ""  # as written on disk; default file_name
    image_format: str = "JPEG"
    mode: str = "RGB"
    category_id: int = 1

    def __post_init__(self):
        self.file_name = self.file_name or f"{self.image_id:03d}.jpg"
        self.disk_name = self.disk_name or self.file_name


def polygon(box: tuple[float, float, float, float], triangle: bool) -> list[float]:
    x0, y0, x1, y1 = box
    if triangle:
        return [x0, y1, (x0 + x1) / 2, y0, x1, y1]
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_image(path: Path, spec: ImageSpec) -> None:
    rng = np.random.default_rng(spec.image_id)
    gradient = np.linspace(0, 200, spec.width, dtype=np.float32)[None, :, None]
    pixels = np.clip(gradient + rng.integers(0, 55, (spec.height, spec.width, 3)), 0, 255).astype(
        np.uint8
    )
    image = PIL.Image.fromarray(pixels)
    if spec.mode == "I;16":
        image = PIL.Image.fromarray(pixels[..., 0].astype(np.uint16) * 257)
    elif spec.mode != "RGB":
        image = image.convert(spec.mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=spec.image_format)


def write_split(
    image_dir: Path,
    annotation_file: Path,
    specs: Sequence[ImageSpec],
    *,
    extra_images: Sequence[dict[str, Any]] = (),
    extra_annotations: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Writes the images of `specs` and a COCO JSON describing them; returns the JSON."""
    images, annotations = [], []
    for spec in specs:
        write_image(image_dir / spec.disk_name, spec)
        images.append(
            {
                "id": spec.image_id,
                "file_name": spec.file_name,
                "height": spec.height,
                "width": spec.width,
            }
        )
        for k, box in enumerate(spec.objects):
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": spec.image_id,
                    "category_id": spec.category_id,
                    "segmentation": [polygon(box, triangle=k % 2 == 1)],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
            )
    for extra in extra_annotations:
        annotations.append({"id": len(annotations) + 1, "iscrowd": 0, "category_id": 1, **extra})
    data = {
        "images": images + list(extra_images),
        "annotations": annotations,
        "categories": [{"id": 0, "name": "ship"}, {"id": 1, "name": "object"}],
    }
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(json.dumps(data))
    return data


def grid_objects(
    height: int, width: int, count: int, size: int = 8
) -> list[tuple[float, float, float, float]]:
    """`count` non-overlapping objects laid out on a grid inside the image."""
    per_row = max(1, (width - 2) // (size + 2))
    boxes = []
    for i in range(count):
        row, col = divmod(i, per_row)
        x0, y0 = 2 + col * (size + 2), 2 + row * (size + 2)
        assert y0 + size <= height, "image too small for that many objects"
        boxes.append((float(x0), float(y0), float(x0 + size), float(y0 + size)))
    return boxes


def nwpu_release(root: Path) -> Path:
    """NWPU/Images + NWPU/Annotations with clean train (4 images, 13 instances) and val (2, 3)."""
    base = root / "NWPU"
    train = [
        ImageSpec(1, 60, 80, grid_objects(60, 80, 2, size=12)),
        ImageSpec(2, 80, 60, grid_objects(80, 60, 7)),  # more than a small max_instances: chunked
        ImageSpec(3, 50, 50, [(5.0, 5.0, 30.0, 45.0)], image_format="PNG", file_name="003.png"),
        ImageSpec(4, 40, 96, grid_objects(40, 96, 3, size=10)),
    ]
    val = [
        ImageSpec(5, 64, 64, grid_objects(64, 64, 2, size=14)),
        ImageSpec(6, 48, 72, [(10.0, 4.0, 60.0, 40.0)]),
    ]
    write_split(base / "Images", base / "Annotations/NWPU_instances_train.json", train)
    write_split(base / "Images", base / "Annotations/NWPU_instances_val.json", val)
    return base


def whu_release(root: Path, image_root: str = "images/{split}/image") -> Path:
    """WHU tiles (48x48): per split two tiles with buildings and one empty tile."""
    base = root / "WHU"
    for offset, split in enumerate(("train", "val", "test")):
        first = 100 * (offset + 1)
        specs = [
            ImageSpec(
                first,
                48,
                48,
                grid_objects(48, 48, 3, size=10),
                file_name=f"t{first}.png",
                image_format="PNG",
            ),
            ImageSpec(
                first + 1,
                48,
                48,
                [(4.0, 4.0, 40.0, 20.0)],
                file_name=f"t{first + 1}.png",
                image_format="PNG",
            ),
            ImageSpec(first + 2, 48, 48, [], file_name=f"t{first + 2}.png", image_format="PNG"),
        ]
        write_split(
            base / image_root.format(split=split),
            base / f"annotations/WHU_building_{split}.json",
            specs,
        )
    return base


HRSID_BAD = {"train": (351, 375, 376), "test": (166,)}


def hrsid_release(root: Path, config: str = "inshore") -> Path:
    """HRSID SAR chips: JSON says .jpg, disk has grey .png, category id 0, known-bad ids present."""
    base = root / "HRSID"
    for split, good_ids in (("train", (0, 1, 2)), ("test", (3, 4))):
        specs = [
            ImageSpec(
                image_id,
                40,
                40,
                grid_objects(40, 40, 2, size=9),
                file_name=f"P{image_id:04d}.jpg",
                disk_name=f"P{image_id:04d}.png",
                image_format="PNG",
                mode="L",
                category_id=0,
            )
            for image_id in good_ids + HRSID_BAD[split]
        ]
        write_split(base / "Images", base / f"Annotations/{config}/{config}_{split}.json", specs)
    return base


def nwpu_real_dir() -> Path | None:
    """The real NWPU VHR-10 release next to the repository (or $RESAM_NWPU_DIR), if present."""
    path = Path(os.environ.get("RESAM_NWPU_DIR", REPO_ROOT.parent / "shared/data/NWPU"))
    return path if (path / "Annotations/NWPU_instances_train.json").is_file() else None


def run_module(module: str, *args) -> tuple[int, str]:
    """A CLI as a user runs it (`python -m module args`): its exit code and all its output."""
    result = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, timeout=300
    )
    return result.returncode, result.stdout + result.stderr
