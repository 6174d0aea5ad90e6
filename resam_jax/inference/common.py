"""What the three prediction commands share: their one error class, image decoding, the check
that prompts lie inside the image, and loading a converted checkpoint with its pixel input."""

from __future__ import annotations

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
