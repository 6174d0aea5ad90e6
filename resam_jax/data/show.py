"""Draws what the model will see: a grid of samples, weak view | strong view, with instance
masks, GT boxes and point prompts (positive green, negative red; padding is dark grey).

    python -m resam_jax.data.show --dataset nwpu_vhr10 --data-dir DIR --output grid.png
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Mapping, Sequence

import numpy as np
import PIL.Image
import PIL.ImageDraw

from resam_jax.data.coco import DataError
from resam_jax.data.pipeline import DataConfig, make_dataset
from resam_jax.visualize import draw_point, instance_colour, tint_instances

PADDING = (40, 40, 40)


def render_view(
    image: np.ndarray, sample: Mapping[str, np.ndarray], panel_size: int, title: str
) -> PIL.Image.Image:
    """One view with overlays, scaled to panel_size x panel_size."""
    image = np.where(sample["content_mask"][..., None], image, np.uint8(PADDING))
    valid = np.flatnonzero(sample["instance_valid"])
    canvas = tint_instances(image, sample["masks"], valid)
    size = image.shape[0]
    picture = PIL.Image.fromarray(canvas).resize((panel_size, panel_size), PIL.Image.BILINEAR)
    draw = PIL.ImageDraw.Draw(picture)
    scale = panel_size / size
    radius = max(2, panel_size // 128)
    for i in valid:
        draw.rectangle((sample["boxes"][i] * scale).tolist(), outline=instance_colour(i), width=2)
        for (x, y), label in zip(sample["points"][i], sample["point_labels"][i], strict=True):
            if label < 0:
                continue
            # +0.5: points are pixel indices, drawn at the pixel centre.
            draw_point(draw, (x + 0.5) * scale, (y + 0.5) * scale, label, radius)
    draw.text((4, 4), title, fill=(255, 255, 255))
    return picture


def render_grid(samples: Sequence[Mapping[str, np.ndarray]], panel_size: int) -> PIL.Image.Image:
    grid = PIL.Image.new("RGB", (2 * panel_size, len(samples) * panel_size))
    for row, sample in enumerate(samples):
        header = f"image {int(sample['image_id'])}, {int(sample['instance_valid'].sum())} instances"
        grid.paste(
            render_view(sample["weak_image"], sample, panel_size, f"weak: {header}"),
            (0, row * panel_size),
        )
        grid.paste(
            render_view(sample["strong_image"], sample, panel_size, "strong"),
            (panel_size, row * panel_size),
        )
    return grid


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resam_jax.data.show", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dataset", required=True)
    parser.add_argument(
        "--config", default="default", help="builder config (hrsid: inshore|offshore|all)"
    )
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument(
        "--eval", action="store_true", help="evaluation samples (no flip, strong == weak)"
    )
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--pad", default="center", choices=["center", "bottom_right"])
    parser.add_argument("--num-points", type=int, default=1)
    parser.add_argument("--max-instances", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--panel-size", type=int, default=512)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    config = DataConfig(
        dataset=args.dataset,
        dataset_config=args.config,
        data_dir=args.data_dir,
        image_size=args.image_size,
        pad=args.pad,
        num_points=args.num_points,
        max_instances=args.max_instances,
        read_threads=1,
        prefetch_batches=1,
    )
    try:
        batches = make_dataset(
            config, args.split, train=not args.eval, seed=args.seed, shard_index=0, shard_count=1
        )
        samples = [
            {k: v[0] for k, v in batch.items()}
            for batch in itertools.islice(batches, args.num_samples)
        ]
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    render_grid(samples, args.panel_size).save(args.output)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
