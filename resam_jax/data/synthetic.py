"""A small synthetic remote-sensing-like dataset in COCO layout, for the demo and tests.

Each image is textured ground with a water band, "buildings" (rotated rectangles with a roof
shade and a cast shadow) and "ships" (thin rotated ellipses on the water). Instances are
written as COCO polygons, so the demo reads them through the same coco_instances builder and
pipeline as a user's own data:

    write_coco_dataset(root, num_train=48, num_val=12, image_size=160, seed=0, style="target")
    #   root/images/*.png, root/annotations/{train,val}.json

Two styles draw the same scenes with a domain shift between them, standing in for "natural
images -> remote sensing": "source" (clean, saturated, high-contrast colours; only used to
pretrain the demo's tiny SAM, tools/pretrain_tiny_sam.py) and "target" (the same palette seen
through a worse sensor: washed-out colours, contrast cut to 0.7, strongly textured noisy
ground, SAR-like multiplicative speckle; what the demo adapts that SAM to).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = ({"id": 1, "name": "building"}, {"id": 2, "name": "ship"})


RGB = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class SyntheticStyle:
    """How a scene is coloured; the geometry does not depend on the style."""

    ground_colours: tuple[RGB, ...]
    ground_texture: float  # amplitude of the coarse ground pattern, relative to 0..255
    ground_noise: float  # std of the per-pixel additive noise
    water_colour: RGB
    roof_colours: tuple[RGB, ...]
    ship_brightness: tuple[int, int]  # ships are grey-white, uniform in [low, high)
    saturation: float  # 1 keeps the colours, 0 turns the image grey
    contrast: float  # scale of the deviations from the image mean
    speckle: float  # std of unit-mean multiplicative (gamma) noise; 0 = none


STYLES = {
    "source": SyntheticStyle(
        ground_colours=((80, 140, 60), (105, 155, 70), (125, 165, 85)),
        ground_texture=0.1,
        ground_noise=2.0,
        water_colour=(30, 80, 170),
        roof_colours=((220, 40, 40), (240, 200, 40), (40, 80, 220), (245, 245, 245)),
        ship_brightness=(225, 256),
        saturation=1.0,
        contrast=1.0,
        speckle=0.0,
    ),
    "target": SyntheticStyle(
        ground_colours=((80, 140, 60), (105, 155, 70), (125, 165, 85)),
        ground_texture=0.45,
        ground_noise=6.0,
        water_colour=(30, 80, 170),
        roof_colours=((220, 40, 40), (240, 200, 40), (40, 80, 220), (245, 245, 245)),
        ship_brightness=(225, 256),
        saturation=0.6,
        contrast=0.7,
        speckle=0.15,
    ),
}


def _ground(rng: np.random.Generator, size: int, style: SyntheticStyle) -> Image.Image:
    coarse = rng.uniform(0, 1, (size // 16 + 2, size // 16 + 2))
    base = np.array(style.ground_colours[rng.integers(len(style.ground_colours))], np.float32)
    field = np.array(
        Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    )
    texture = base + (field[..., None].astype(np.float32) - 128) * style.ground_texture
    texture += rng.normal(0, style.ground_noise, (size, size, 3))
    return Image.fromarray(np.clip(texture, 0, 255).astype(np.uint8))


def _finish(image: Image.Image, rng: np.random.Generator, style: SyntheticStyle) -> Image.Image:
    """The sensor look of a style: desaturation, contrast, speckle."""
    pixels = np.asarray(image.filter(ImageFilter.SMOOTH), np.float32)
    grey = pixels.mean(axis=-1, keepdims=True)
    pixels = grey + style.saturation * (pixels - grey)
    pixels = pixels.mean() + style.contrast * (pixels - pixels.mean())
    if style.speckle:
        # Gamma with mean 1 and std `speckle`, one value per pixel for all channels, like SAR.
        shape = 1.0 / style.speckle**2
        pixels *= rng.gamma(shape, 1.0 / shape, pixels.shape[:2])[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _rotated_rectangle(cx, cy, w, h, angle) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [
        (cx + x * c - y * s, cy + x * s + y * c)
        for x, y in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))
    ]


def _ellipse(cx, cy, a, b, angle, points=16) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    ts = np.linspace(0, 2 * math.pi, points, endpoint=False)
    return [
        (
            cx + a * math.cos(t) * c - b * math.sin(t) * s,
            cy + a * math.cos(t) * s + b * math.sin(t) * c,
        )
        for t in ts
    ]


def _overlaps(box, boxes) -> bool:
    return any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes)


def synthetic_image(
    rng: np.random.Generator, size: int, style: SyntheticStyle
) -> tuple[Image.Image, list[tuple[int, list[tuple[float, float]]]]]:
    """One image and its instances as (category id, polygon) with non-overlapping boxes."""
    image = _ground(rng, size, style)
    draw = ImageDraw.Draw(image)
    water_y = rng.uniform(0.55, 0.75) * size
    water_h = rng.uniform(0.18, 0.25) * size
    draw.rectangle((0, water_y, size, water_y + water_h), fill=style.water_colour)
    instances, boxes = [], []
    scale = size / 160
    for _ in range(40):
        if len(instances) >= 8:
            break
        is_ship = rng.uniform() < 0.35
        if is_ship:
            cx = rng.uniform(0.1, 0.9) * size
            cy = water_y + rng.uniform(0.3, 0.7) * water_h
            polygon = _ellipse(
                cx,
                cy,
                rng.uniform(9, 15) * scale,
                rng.uniform(3, 5) * scale,
                rng.uniform(-0.4, 0.4),
            )
        else:
            cx, cy = rng.uniform(0.1, 0.9) * size, rng.uniform(0.08, 0.5) * size
            polygon = _rotated_rectangle(
                cx,
                cy,
                rng.uniform(12, 26) * scale,
                rng.uniform(10, 20) * scale,
                rng.uniform(0, math.pi / 2),
            )
        xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
        box = (min(xs) - 2, min(ys) - 2, max(xs) + 2, max(ys) + 2)
        if box[0] < 0 or box[1] < 0 or box[2] >= size or box[3] >= size or _overlaps(box, boxes):
            continue
        if is_ship:
            draw.polygon([(x + 2, y + 2) for x, y in polygon], fill=(25, 45, 70))
            draw.polygon(
                polygon, fill=tuple(int(v) for v in rng.integers(*style.ship_brightness, 3))
            )
        else:
            draw.polygon([(x + 3, y + 3) for x, y in polygon], fill=(45, 45, 40))
            draw.polygon(polygon, fill=style.roof_colours[rng.integers(len(style.roof_colours))])
        instances.append((2 if is_ship else 1, polygon))
        boxes.append(box)
    return _finish(image, rng, style), instances


def write_coco_dataset(
    root: str | Path,
    *,
    num_train: int,
    num_val: int,
    image_size: int,
    seed: int,
    style: str = "target",
) -> Path:
    """Writes images/ and annotations/{train,val}.json under root in one of STYLES; returns root."""
    if style not in STYLES:
        raise ValueError(f"unknown synthetic style {style!r}; expected one of {sorted(STYLES)}")
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
            image, instances = synthetic_image(rng, image_size, STYLES[style])
            image = image.crop((0, 0, image_size, height))
            file_name = f"{split}_{image_id:04d}.png"
            image.save(root / "images" / file_name)
            coco["images"].append(
                {"id": image_id, "file_name": file_name, "width": image_size, "height": height}
            )
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
