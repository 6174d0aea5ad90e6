"""Segment one image with a converted SAM or SAM 2 checkpoint (told apart by its header) from
point and box prompts, or a whole folder from COCO-style prompts (resam_jax/inference/folder.py
says the format).

    python -m resam_jax.predict --checkpoint weights/sam_vit_b --image ship.png \\
        --point 420,310,1 --point 100,80,0 --box 380,260,470,360 --multimask \\
        --output ship.npz --overlay ship.png
    python -m resam_jax.predict --checkpoint weights/sam_vit_b --images scenes/ \\
        --prompts prompts.json --output results.json [--ground-truth instances.json]
    python -m resam_jax.predict --checkpoint weights/sam_vit_b --image ship.png --everything \\
        --output masks.json [--points-per-side 32 --pred-iou-thresh 0.88 ...]

Coordinates are pixels of the original image; a point's label is 1 (object)
or 0 (background). The .npz holds `masks` (bool [M, H, W]), `iou_predictions`
(float32 [M]) and `low_res_logits` (float32 [M, 256, 256]), as
segment_anything.SamPredictor.predict returns them. --everything segments without prompts
(resam_jax/inference/automatic.py): masks.json lists segment_anything's SamAutomaticMaskGenerator
records with COCO RLE segmentations and `score` (the predicted IoU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from resam_jax.inference import everything
from resam_jax.inference.common import (
    PredictError,
    check_inside,
    checkpoint_family,
    load_image,
    load_model,
    load_sam2_model,
)
from resam_jax.visualize import draw_point, tint_instances


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


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m resam_jax.predict",
        description="Predict SAM masks for one image from point / box prompts, or for a folder "
        "of images from COCO-style prompts.",
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="converted checkpoint directory"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", type=Path, help="one image, prompted by --point / --box")
    source.add_argument(
        "--images", type=Path, help="a folder of images, prompted by --prompts (COCO style)"
    )
    parser.add_argument(
        "--point", action="append", default=[], type=parse_point, metavar="X,Y,LABEL"
    )
    parser.add_argument("--box", type=parse_box, metavar="X0,Y0,X1,Y1")
    parser.add_argument(
        "--prompts", type=Path, help="with --images: prompts.json (resam_jax/inference/folder.py)"
    )
    parser.add_argument(
        "--ground-truth",
        type=Path,
        help="with --images: COCO instances JSON; prints the masks' evaluation table",
    )
    parser.add_argument(
        "--multimask",
        action="store_true",
        help="three candidate masks instead of one (--images: the best by predicted IoU is kept)",
    )
    parser.add_argument(
        "--pixel-norm",
        default="auto",
        help="pixel input of the weights: sam | unit ([0, 1]); auto (default) takes the "
        "checkpoint's record, else sam",
    )
    parser.add_argument(
        "--output",
        required=True,
        type=Path,
        help="OUT.npz (--image), results.json (--images) or masks.json (--everything)",
    )
    parser.add_argument(
        "--overlay", type=Path, help="OUT.png: the image with masks and prompts drawn"
    )
    everything.add_arguments(parser, crops=True)
    args = parser.parse_args(argv)
    if args.everything:
        if args.image is None or args.point or args.box is not None or args.multimask:
            parser.error("--everything takes one --image and no --point, --box or --multimask")
    elif args.image is not None:
        if not args.point and args.box is None:
            parser.error("give at least one --point or a --box")
        if args.prompts or args.ground_truth:
            parser.error("--prompts and --ground-truth go with --images, not --image")
    else:
        if args.prompts is None:
            parser.error("--images needs --prompts prompts.json")
        if args.point or args.box is not None or args.overlay:
            parser.error(
                "--point, --box and --overlay go with --image; give --images prompts in --prompts"
            )
    return args


def _load_predictor(checkpoint: Path, pixel_norm: str):
    """SamPredictor or, for a SAM 2 checkpoint (told by its header), Sam2ImagePredictor."""
    if checkpoint_family(checkpoint) == "sam2":
        from resam_jax.inference.predictor_sam2 import Sam2ImagePredictor

        return Sam2ImagePredictor(load_sam2_model(checkpoint, pixel_norm))
    from resam_jax.inference.predictor import SamPredictor

    return SamPredictor(*load_model(checkpoint, pixel_norm))


def _prompt_coordinates(points, box) -> list[tuple[str, tuple[float, float]]]:
    """(name as the command line gave it, (x, y)) of every point and box corner."""
    named = [(f"--point {x:g},{y:g},{label}: ({x:g}, {y:g})", (x, y)) for x, y, label in points]
    if box is not None:
        given = "--box " + ",".join(f"{v:g}" for v in box)
        named += [(f"{given}: corner ({x:g}, {y:g})", (x, y)) for x, y in (box[:2], box[2:])]
    return named


def _predict_image(args: argparse.Namespace) -> str:
    image = load_image(args.image)
    height, width = image.shape[:2]
    check_inside(
        _prompt_coordinates(args.point, args.box),
        (height, width),
        f"the image {args.image} ({width}x{height} px)",
    )
    predictor = _load_predictor(args.checkpoint, args.pixel_norm)
    predictor.set_image(image)
    points = np.asarray([p[:2] for p in args.point], np.float32) if args.point else None
    labels = np.asarray([p[2] for p in args.point], np.int32) if args.point else None
    box = np.asarray(args.box, np.float32) if args.box is not None else None
    masks, iou, low_res = predictor.predict(points, labels, box, multimask_output=args.multimask)
    masks = masks.astype(bool)  # SAM 2's predictor returns 0 / 1 floats
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, masks=masks, iou_predictions=iou, low_res_logits=low_res)
    if args.overlay:
        args.overlay.parent.mkdir(parents=True, exist_ok=True)
        draw_overlay(image, masks, args.point, args.box).save(args.overlay)
    scores = ", ".join(f"{s:.3f}" for s in iou)
    return f"{len(masks)} mask(s) of {masks.shape[1]}x{masks.shape[2]} -> {args.output} (predicted IoU {scores})"


def _segment_everything(args: argparse.Namespace) -> str:
    from pycocotools import mask as mask_utils

    options = everything.generator_options(args, crops=True)
    image = load_image(args.image)
    if checkpoint_family(args.checkpoint) == "sam2":
        raise PredictError(f"--everything takes a SAM checkpoint; {args.checkpoint} is SAM 2")
    records = everything.segment_image(
        lambda: load_model(args.checkpoint, args.pixel_norm), image, args.output, options
    )
    if args.overlay:
        args.overlay.parent.mkdir(parents=True, exist_ok=True)
        masks = [mask_utils.decode(r["segmentation"]).astype(bool) for r in records]
        draw_overlay(image, np.asarray(masks).reshape(-1, *image.shape[:2]), [], None).save(
            args.overlay
        )
    return f"{len(records)} mask(s) -> {args.output} (COCO RLE, predicted IoU and stability)"


def _predict_folder(args: argparse.Namespace) -> str:
    from resam_jax.inference import folder as predict_folder

    # Every input is checked before the model is loaded and anything is written.
    images = predict_folder.read_prompts(args.prompts, args.images)
    ground_truth = None
    if args.ground_truth is not None:
        ground_truth = predict_folder.read_ground_truth(args.ground_truth, images)
    predictor = _load_predictor(args.checkpoint, args.pixel_norm)
    results = predict_folder.predict_images(predictor, images, args.multimask)
    predict_folder.write_json(args.output, results)
    summary = f"{len(results)} mask(s) of {len(images)} image(s) -> {args.output} (COCO results)"
    if ground_truth is None:
        return summary
    from resam_jax.run.reporting import evaluation_table

    scores = predict_folder.score_results(ground_truth, results)
    return summary + "\n" + evaluation_table([(f"{args.prompts.name}", scores)])


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        if args.everything:
            message = _segment_everything(args)
        elif args.images is not None:
            message = _predict_folder(args)
        else:
            message = _predict_image(args)
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
