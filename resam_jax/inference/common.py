"""What the three prediction commands share: their one error class, image decoding, the check
that prompts lie inside the image, and loading a converted checkpoint (SAM with its pixel input,
or SAM 2, told apart by the checkpoint's header: load_either_model)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from resam_jax.data.coco import BBOX_TOLERANCE_PX


class PredictError(Exception):
    """A user-facing failure of a prediction command; the message says what to fix."""


def load_image(path: Path) -> np.ndarray:
    """uint8 RGB [H, W, 3] of an image file, or a PredictError naming the file."""
    if not path.is_file():
        raise PredictError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise PredictError(f"cannot decode image {path}: {e}") from None


def check_inside(
    named_xy: Iterable[tuple[str, Sequence[float]]],
    size: tuple[int, int],
    image: str,
    margin: float = BBOX_TOLERANCE_PX,
) -> None:
    """Every (name, (x, y)) prompt coordinate within the image, which spans [0, width] x
    [0, height] in SAM's pixel frame, up to margin px (the data's bbox rounding); else a
    PredictError "{name} lies outside {image}"."""
    height, width = size
    for name, (x, y) in named_xy:
        if not (-margin <= x <= width + margin and -margin <= y <= height + margin):
            raise PredictError(f"{name} lies outside {image}")


def load_model(checkpoint: Path, pixel_norm: str = "auto"):
    """(SAM of a converted checkpoint, its pixel input). pixel_norm "auto" takes what the
    checkpoint's header records (tools/pretrain_sam.py writes it), else SAM's own "sam"."""
    from resam_jax import compilation_cache
    from resam_jax.models.sam import PIXEL_NORMS, CheckpointError, CheckpointMismatchError, load_sam
    from resam_jax.models.sam.checkpoint import read_header

    compilation_cache.enable()  # before the first compilation (RESAM_JAX_COMPILATION_CACHE)
    try:
        if pixel_norm == "auto":
            pixel_norm = read_header(checkpoint).get("source", {}).get("pixel_norm", "sam")
        model = load_sam(checkpoint)
    except (CheckpointError, CheckpointMismatchError) as e:
        raise PredictError(str(e)) from None
    if pixel_norm not in PIXEL_NORMS:
        raise PredictError(f"--pixel-norm must be auto or one of {PIXEL_NORMS}, got {pixel_norm!r}")
    return model, pixel_norm


SAM2_FORMAT = "resam-jax/sam2/1"  # resam_jax.models.sam2.checkpoint.FORMAT


def checkpoint_family(checkpoint: Path) -> str:
    """The family of a converted checkpoint: "sam2" if its sam_checkpoint.json says the SAM 2
    format, else "sam" (whose loader says what is wrong with anything else)."""
    try:
        header = json.loads((Path(checkpoint) / "sam_checkpoint.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return "sam"
    return "sam2" if isinstance(header, dict) and header.get("format") == SAM2_FORMAT else "sam"


def load_sam2_model(checkpoint: Path, pixel_norm: str = "auto"):
    """The SAM 2 of a converted checkpoint; its pixel input is fixed (ImageNet mean / std)."""
    from resam_jax import compilation_cache
    from resam_jax.models.sam2.checkpoint import CheckpointError, load_sam2

    if pixel_norm not in ("auto", "sam"):
        raise PredictError(
            f"--pixel-norm {pixel_norm} is for SAM checkpoints; {checkpoint} is a SAM 2 "
            "checkpoint, whose pixels are always normalised as SAM2ImagePredictor does (auto)"
        )
    compilation_cache.enable()  # before the first compilation (RESAM_JAX_COMPILATION_CACHE)
    try:
        header = json.loads((Path(checkpoint) / "sam_checkpoint.json").read_text())
        adapted_on = header.get("source", {}).get("pixel_norm", "sam")
    except (OSError, ValueError, AttributeError):
        adapted_on = "sam"  # load_sam2 says what is wrong with the header
    if adapted_on != "sam":  # a run with --config.model.pixel_norm=unit
        raise PredictError(
            f"{checkpoint} was adapted on model.pixel_norm={adapted_on!r} pixels, but SAM 2 "
            "predicts on SAM2Transforms' normalised pixels; train with model.pixel_norm='sam' "
            "(the configs/*_sam2.py default)"
        )
    try:
        return load_sam2(checkpoint)
    except CheckpointError as e:
        raise PredictError(str(e)) from None


def load_either_model(checkpoint: Path, pixel_norm: str = "auto"):
    """(model, its pixel input) of a converted SAM or SAM 2 checkpoint, told apart by its
    header: load_model's for SAM; for SAM 2 its model and "sam" (the pixels are always
    normalised as SAM2ImagePredictor does)."""
    if checkpoint_family(checkpoint) == "sam2":
        return load_sam2_model(checkpoint, pixel_norm), "sam"
    return load_model(checkpoint, pixel_norm)
