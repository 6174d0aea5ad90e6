"""The --everything mode of `python -m resam_jax.predict` (one image -> COCO RLE results) and of
`python -m resam_jax.predict_scene` (a scene in tiles, scene.segment_everything): its flags and
the one-image command. The masks come from resam_jax.inference.automatic.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from resam_jax.inference.common import PredictError

# (flag, type, default, help) of the generator's options; the crop options only for one image.
OPTIONS = (
    ("points_per_side", int, 32, "grid points along each side of the image (tile)"),
    ("points_per_batch", int, 64, "grid points decoded together"),
    ("pred_iou_thresh", float, 0.88, "keep masks whose predicted IoU exceeds this"),
    ("stability_score_thresh", float, 0.95, "keep masks at least this stable"),
    ("stability_score_offset", float, 1.0, "logit offset of the stability score"),
    ("box_nms_thresh", float, 0.7, "box IoU above which the lesser duplicate goes"),
    ("min_mask_region_area", int, 0, "fill holes and drop islands under this many pixels"),
)
CROP_OPTIONS = (
    ("crop_n_layers", int, 0, "layers of crops segmented again (layer i: 4^i crops)"),
    ("crop_nms_thresh", float, 0.7, "box IoU above which a duplicate across crops goes"),
    ("crop_overlap_ratio", float, 512 / 1500, "overlap of the first layer's crops"),
    ("crop_n_points_downscale_factor", int, 1, "grid points per side divided by this per layer"),
)


def add_arguments(parser: argparse.ArgumentParser, crops: bool) -> None:
    """--everything and the generator's options (segment_anything's names and defaults)."""
    group = parser.add_argument_group(
        "segment everything", "no prompts: a grid of points, masks filtered and deduplicated"
    )
    group.add_argument(
        "--everything", action="store_true", help="segment everything, without prompts"
    )
    for name, kind, default, text in OPTIONS + (CROP_OPTIONS if crops else ()):
        group.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=default, help=f"{text} ({default:g})"
        )


def generator_options(args: argparse.Namespace, crops: bool) -> dict:
    """The generator's keyword arguments from the command line; a PredictError naming the flag
    for a value it cannot take."""
    from resam_jax.inference.automatic import check_options

    names = [name for name, *_ in OPTIONS + (CROP_OPTIONS if crops else ())]
    options = {name: getattr(args, name) for name in names}
    try:
        check_options(**options)
    except ValueError as e:
        message = str(e)
        for name in names:
            message = message.replace(name, "--" + name.replace("_", "-"))
        raise PredictError(message) from None
    return options


def segment_image(
    load_model: Callable[[], tuple[object, str]],
    image: np.ndarray,
    output: Path,
    options: dict,
) -> list[dict]:
    """Every mask of one image as COCO RLE records (segment_anything's, plus `score` = the
    predicted IoU), best first, written to `output` as a JSON list."""
    from resam_jax.files import staged
    from resam_jax.inference.automatic import SamAutomaticMaskGenerator

    model, pixel_norm = load_model()
    generator = SamAutomaticMaskGenerator(model, pixel_norm, output_mode="coco_rle", **options)
    records = generator.generate(image)
    for record in records:
        record["score"] = record["predicted_iou"]
    with staged(output) as staging:
        staging.write_text(json.dumps(records))
    return records
