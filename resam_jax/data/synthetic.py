"""A small synthetic remote-sensing-like dataset in COCO layout, for the demo and tests.

Each image is textured ground (smooth noise in earthy tones, a road or river band) with
"buildings" (rotated rectangles with a roof shade and a cast shadow) and "ships" (thin rotated
ellipses on the water band). Instances are written as COCO polygons, so the demo reads them
through the same coco_instances builder and pipeline as a user's own data:

    write_coco_dataset(root, num_train=48, num_val=12, image_size=160, seed=0)
    #   root/images/*.png, root/annotations/{train,val}.json
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = ({"id": 1, "name": "building"}, {"id": 2, "name": "ship"})


def _ground(rng: np.random.Generator, size: int) -> Image.Image:
    coarse = rng.uniform(0, 1, (size // 16 + 2, size // 16 + 2, 1))
    base = np.array(rng.choice([(110, 120, 80), (140, 130, 100), (95, 110, 90)]), np.float32)
    field = np.array(Image.fromarray((coarse[..., 0] * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
    texture = base + (field[..., None].astype(np.float32) - 128) * 0.25 + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8))


def _rotated_rectangle(cx, cy, w, h, angle) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]


def _ellipse(cx, cy, a, b, angle, points=16) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    ts = np.linspace(0, 2 * math.pi, points, endpoint=False)
    return [(cx + a * math.cos(t) * c - b * math.sin(t) * s, cy + a * math.cos(t) * s + b * math.sin(t) * c) for t in ts]


def _overlaps(box, boxes) -> bool:
    return any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)


def synthetic_image(rng: np.random.Generator, size: int) -> tuple[Image.Image, list[tuple[int, list[tuple[float, float]]]]]:
    """One image and its instances as (category id, polygon) with non-overlapping boxes."""
    image = _ground(rng, size)
    draw = ImageDraw.Draw(image)
    water_y = rng.uniform(0.55, 0.75) * size
    water_h = rng.uniform(0.18, 0.25) * size
    draw.rectangle((0, water_y, size, water_y + water_h), fill=(40, 70, 105))
    instances, boxes = [], []
    scale = size / 160
    for _ in range(40):
        if len(instances) >= 8:
            break
        is_ship = rng.uniform() < 0.35
        if is_ship:
            cx = rng.uniform(0.1, 0.9) * size
            cy = water_y + rng.uniform(0.3, 0.7) * water_h
            polygon = _ellipse(cx, cy, rng.uniform(9, 15) * scale, rng.uniform(3, 5) * scale, rng.uniform(-0.4, 0.4))
        else:
            cx, cy = rng.uniform(0.1, 0.9) * size, rng.uniform(0.08, 0.5) * size
            polygon = _rotated_rectangle(cx, cy, rng.uniform(12, 26) * scale, rng.uniform(10, 20) * scale, rng.uniform(0, math.pi / 2))
        xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
        box = (min(xs) - 2, min(ys) - 2, max(xs) + 2, max(ys) + 2)
        if box[0] < 0 or box[1] < 0 or box[2] >= size or box[3] >= size or _overlaps(box, boxes):
            continue
        if is_ship:
            draw.polygon([(x + 2, y + 2) for x, y in polygon], fill=(25, 45, 70))
            draw.polygon(polygon, fill=tuple(int(v) for v in rng.integers(190, 240, 3)))
        else:
            draw.polygon([(x + 3, y + 3) for x, y in polygon], fill=(45, 45, 40))
            roof = rng.choice([(180, 70, 60), (200, 200, 195), (120, 125, 135)])
            draw.polygon(polygon, fill=tuple(int(v) for v in roof))
        instances.append((2 if is_ship else 1, polygon))
        boxes.append(box)
    return image.filter(ImageFilter.SMOOTH), instances


def write_coco_dataset(root: str | Path, *, num_train: int, num_val: int, image_size: int, seed: int) -> Path:
    """Writes images/ and annotations/{train,val}.json under root; returns root."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image_id, annotation_id = 0, 0
    for split, count in (("train", num_train), ("val", num_val)):
        coco = {"images": [], "annotations": [], "categories": list(CATEGORIES)}
        for _ in range(count):
            image_id += 1
            # Non-square, like real tiles, so resizing and padding are exercised.
            height = image_size - int(rng.integers(0, image_size // 4))
            image, instances = synthetic_image(rng, image_size)
            image = image.crop((0, 0, image_size, height))
            file_name = f"{split}_{image_id:04d}.png"
            image.save(root / "images" / file_name)
            coco["images"].append({"id": image_id, "file_name": file_name, "width": image_size, "height": height})
            for category, polygon in instances:
                clipped = [(x, min(y, height - 1)) for x, y in polygon]
                xs, ys = [p[0] for p in clipped], [p[1] for p in clipped]
                if max(ys) - min(ys) < 2:
                    continue
                annotation_id += 1
                coco["annotations"].append({
                    "id": annotation_id,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": [[round(v, 2) for point in clipped for v in point]],
                    "bbox": [min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)],
                    "area": 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(clipped, clipped[1:] + clipped[:1]))),
                    "iscrowd": 0,
                })  # fmt: skip
        (root / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return root
