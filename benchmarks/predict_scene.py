"""Time and peak memory of `python -m resam_jax.predict_scene` on two scene sizes.

    python benchmarks/predict_scene.py [--sizes 3000,6000] [--nwpu-dir ../shared/data/NWPU]

Each scene is a real NWPU VHR-10 image (603.jpg, 8 baseball diamonds, 918 x 556) repeated into
a square georeferenced GeoTIFF (EPSG:32633, 0.5 m pixels), written strip by strip. The prompts
are 200 in every scene: 100 objects drawn at random (seed 0) among the copies' ground-truth
boxes, each prompted twice, by its box and by a point at the box centre (so overlapping
instances occur). The command runs in a child process with the packaged small SAM
(resam_jax/assets/sam_small_nwpu, 384 px input; ViT-B at 1024 px is too slow on a CPU here) on
768 px tiles (the scale of the NWPU images it was trained on) overlapping by 256, and its peak
resident memory comes from wait4. Memory should not grow with the scene: the scene is read and
the labels written one tile window at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
IMAGE, IMAGE_ID = "603.jpg", 602
TRANSFORM = from_origin(500000.0, 5000000.0, 0.5, 0.5)
PROMPTED_OBJECTS = 100


def write_scene(nwpu_dir: Path, size: int, root: Path) -> tuple[Path, Path]:
    image = np.asarray(Image.open(nwpu_dir / "Images" / IMAGE).convert("RGB"))
    h, w = image.shape[:2]
    annotations = json.loads((nwpu_dir / "Annotations/NWPU_instances_val.json").read_text())
    boxes = [a["bbox"] for a in annotations["annotations"] if a["image_id"] == IMAGE_ID]
    scene = root / f"scene_{size}.tif"
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8")
    profile.update(crs="EPSG:32633", transform=TRANSFORM, tiled=True, compress="deflate")
    with rasterio.open(scene, "w", **profile) as dst:
        for row in range(0, size, h):
            strip = np.tile(image, (1, -(-size // w), 1))[: min(h, size - row), :size]
            dst.write(np.moveaxis(strip, -1, 0), window=Window(0, row, size, strip.shape[0]))
    objects = [
        (x + cx * w, y + cy * h, x + bw + cx * w - 1, y + bh + cy * h - 1)
        for cy in range(-(-size // h))
        for cx in range(-(-size // w))
        for x, y, bw, bh in boxes
        if x + bw + cx * w <= size and y + bh + cy * h <= size
    ]
    chosen = np.random.default_rng(0).choice(len(objects), PROMPTED_OBJECTS, replace=False)

    def to_map(x, y):  # pixel index -> map coordinates of the pixel's centre
        a, b, c, d, e, f = tuple(TRANSFORM)[:6]
        return [a * (x + 0.5) + b * (y + 0.5) + c, d * (x + 0.5) + e * (y + 0.5) + f]

    features = []
    for n, i in enumerate(sorted(chosen)):
        x0, y0, x1, y1 = objects[i]
        ring = [to_map(x, y) for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]
        for prompt_id, geometry in (
            (f"box{n}", {"type": "Polygon", "coordinates": [ring]}),
            (f"point{n}", {"type": "Point", "coordinates": to_map((x0 + x1) / 2, (y0 + y1) / 2)}),
        ):
            features.append(
                {"type": "Feature", "geometry": geometry, "properties": {"id": prompt_id}}
            )
    prompts = root / f"prompts_{size}.geojson"
    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    prompts.write_text(json.dumps({"type": "FeatureCollection", "crs": crs, "features": features}))
    return scene, prompts


def run(scene: Path, prompts: Path, root: Path, batch_tiles: int) -> dict:
    command = [sys.executable, "-m", "resam_jax.predict_scene"]
    command += ["--checkpoint", str(REPO / "resam_jax/assets/sam_small_nwpu")]
    command += ["--image", str(scene), "--prompts", str(prompts)]
    command += ["--output", str(root / f"{scene.stem}_labels.tif")]
    command += ["--vectors", str(root / f"{scene.stem}_instances.geojson")]
    command += ["--tile-size", "768", "--overlap", "256", "--batch-tiles", str(batch_tiles)]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"predict_scene failed on {scene}: {' '.join(command)}")
    summary = json.loads(stdout.decode().splitlines()[0])
    summary["wall_seconds"] = round(time.perf_counter() - started, 1)
    summary["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
    summary["peak_rss_mib"] = round(usage.ru_maxrss / 1024)  # Linux reports KiB
    summary["command"] = " ".join(command)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="3000,6000", help="scene sides in pixels")
    parser.add_argument("--nwpu-dir", type=Path, default=REPO.parent / "shared/data/NWPU")
    parser.add_argument("--batch-tiles", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for size in (int(s) for s in args.sizes.split(",")):
            scene, prompts = write_scene(args.nwpu_dir, size, Path(tmp))
            rows.append(run(scene, prompts, Path(tmp), args.batch_tiles))
            print(json.dumps(rows[-1]), flush=True)
    header = ("scene", "prompts", "tiles", "encoded", "wall s", "CPU s", "peak RSS MiB")
    keys = ("scene", "prompts", "tiles", "tiles_encoded", "wall_seconds", "cpu_seconds")
    print("\n" + " ".join(f"{h:>12}" for h in header))
    for r in rows:
        print(" ".join(f"{r[k]:>12}" for k in (*keys, "peak_rss_mib")))


if __name__ == "__main__":
    main()
