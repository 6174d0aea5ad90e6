"""Segment one image with a converted SAM checkpoint from point and box prompts.

    python -m resam_jax.predict --checkpoint weights/sam_vit_b --image ship.png \\
        --point 420,310,1 --point 100,80,0 --box 380,260,470,360 --multimask \\
        --output ship.npz --overlay ship.png

Coordinates are pixels of the original image; a point's label is 1 (object)
or 0 (background). The .npz holds `masks` (bool [M, H, W]), `iou_predictions`
(float32 [M]) and `low_res_logits` (float32 [M, 256, 256]), as
segment_anything.SamPredictor.predict returns them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from resam_jax.visualize import draw_point, tint_instances


class PredictError(Exception):
    """A user-facing failure; the message says what to fix."""


def _numbers(text: str, count: int, what: str, example: str) -> list[float]:
    parts = text.split(",")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise argparse.ArgumentTypeError(
            f"{what} must be {count} comma-separated numbers like {example}, got {text!r}"
        )
    return values


def parse_point(text: str) -> tuple[float, float, int]:
    x, y, label = _numbers(text, 3, "--point", "120,45,1")
    if label not in (0, 1):
        raise argparse.ArgumentTypeError(
            f"--point label must be 1 (object) or 0 (background), got {text!r}"
        )
    return x, y, int(label)


def parse_box(text: str) -> list[float]:
    x0, y0, x1, y1 = _numbers(text, 4, "--box", "10,20,200,180")
    if x1 < x0 or y1 < y0:
        raise argparse.ArgumentTypeError(
            f"--box must be X0,Y0,X1,Y1 with X0<=X1 and Y0<=Y1, got {text!r}"
        )
    return [x0, y0, x1, y1]


def load_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise PredictError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise PredictError(f"cannot decode image {path}: {e}") from None


def draw_overlay(image: np.ndarray, masks: np.ndarray, points, box) -> Image.Image:
    """The image with each mask tinted, positive points green, negative red, the box outlined."""
    overlay = Image.fromarray(tint_instances(image, masks, range(len(masks))))
    draw = ImageDraw.Draw(overlay)
    radius = max(3, round(max(image.shape[:2]) / 150))
    for x, y, label in points:
        draw_point(draw, x, y, label, radius)
    if box is not None:
        draw.rectangle(box, outline=(255, 230, 0), width=max(2, radius // 2))
    return overlay


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resam_jax.predict",
        description="Predict SAM masks for one image from point / box prompts.",
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="converted checkpoint directory"
    )
    parser.add_argument("--image", required=True, type=Path)
    parser.add_argument(
        "--point", action="append", default=[], type=parse_point, metavar="X,Y,LABEL"
    )
    parser.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1")
    parser.add_argument(
        "--multimask", action="store_true", help="three candidate masks instead of one"
    )
    parser.add_argument("--output", required=True, type=Path, help="OUT.npz")
    parser.add_argument(
        "--overlay", type=Path, help="OUT.png: the image with masks and prompts drawn"
    )
    args = parser.parse_args(argv)
    if not args.point and args.box is None:
        parser.error("give at least one --point or a --box")

    from resam_jax.model import CheckpointError, CheckpointMismatchError, load_sam
    from resam_jax.predictor import SamPredictor

    try:
        image = load_image(args.image)
        try:
            model = load_sam(args.checkpoint)
        except (CheckpointError, CheckpointMismatchError) as e:
            raise PredictError(str(e)) from None
        predictor = SamPredictor(model)
        predictor.set_image(image)
        points = np.asarray([p[:2] for p in args.point], np.float32) if args.point else None
        labels = np.asarray([p[2] for p in args.point], np.int32) if args.point else None
        box = np.asarray(args.box, np.float32) if args.box is not None else None
        masks, iou, low_res = predictor.predict(
            points, labels, box, multimask_output=args.multimask
        )
        args.output.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(args.output, masks=masks, iou_predictions=iou, low_res_logits=low_res)
        if args.overlay:
            args.overlay.parent.mkdir(parents=True, exist_ok=True)
            draw_overlay(image, masks, args.point, args.box).save(args.overlay)
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    scores = ", ".join(f"{s:.3f}" for s in iou)
    print(
        f"{len(masks)} mask(s) of {masks.shape[1]}x{masks.shape[2]} -> {args.output} (predicted IoU {scores})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
