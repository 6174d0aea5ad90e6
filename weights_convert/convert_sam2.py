"""Convert Meta's SAM 2 / 2.1 checkpoint (sam2.1_hiera_*.pt, sam2_hiera_*.pt) to a resam-jax
checkpoint directory.

    python -m weights_convert.convert_sam2 --checkpoint sam2.1_hiera_base_plus.pt \\
        --output weights/sam2.1_hiera_b+

The Hiera size is read from the tensor shapes (`--model-type auto`, the default). Every
image-mode key is used; the video-only keys (memory attention, memory encoder, object pointers)
are named in the summary and kept aside untouched, so that `export_sam2` writes a file that
`sam2` loads strictly. Any other key is an error. Converting into a directory that already
holds the same conversion is a no-op; one holding anything else is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from resam_jax.models.sam2.checkpoint import HEADER, read_header, save_sam2_params
from resam_jax.models.sam2.config import RELEASED_TYPES, sam2_config
from resam_jax.models.sam2.params import (
    SAM2_1_KEYS,
    CheckpointMismatchError,
    check_params,
    detect_model_type,
    torch_to_flax,
)
from weights_convert.convert_sam import (
    ConversionError,
    read_state_dict,
    run_cli,
    sha256,
    write_conversion,
)


def release_of(video_only: list[str]) -> str:
    """'2.1', '2.0', or 'image-only' from the video keys a checkpoint carries."""
    if not video_only:
        return "image-only"
    return "2.1" if set(SAM2_1_KEYS) <= set(video_only) else "2.0"


def _families(keys: list[str]) -> str:
    """Video-only keys grouped by their top-level module, for the summary."""
    counts: dict[str, int] = {}
    for key in keys:
        counts[key.split(".")[0]] = counts.get(key.split(".")[0], 0) + 1
    return ", ".join(f"{name} ({n})" for name, n in counts.items())


def convert(checkpoint: Path, output: Path, model_type: str = "auto") -> str:
    """Convert `checkpoint` into `output`; returns a one-line summary."""
    state_dict = read_state_dict(checkpoint)
    params, video_only, unknown = torch_to_flax(state_dict)
    detected = detect_model_type(params)
    if detected is None:
        raise ConversionError(
            f"{checkpoint} is not a SAM 2 state_dict: no Hiera trunk of a released size "
            f"({', '.join(RELEASED_TYPES)}) found. Keys that are not SAM 2's: "
            + (", ".join(unknown[:20]) or "none")
        )
    if model_type not in ("auto", detected):
        width = params["image_encoder", "trunk", "patch_embed", "kernel"].shape[-1]
        raise ConversionError(
            f"{checkpoint} holds a SAM 2 {detected} (Hiera width {width}), "
            f"not the declared --model-type {model_type}"
        )
    config = sam2_config(detected)
    try:
        check_params(params, config, str(checkpoint), unknown)
    except CheckpointMismatchError as e:
        raise ConversionError(str(e)) from None

    release = release_of(video_only)
    source = {"path": str(checkpoint), "sha256": sha256(checkpoint), "release": release}
    video = {key: state_dict[key] for key in video_only}
    done = write_conversion(
        output, checkpoint, "SAM 2", source, detected, read_header,
        lambda staging: save_sam2_params(staging, params, config, source, video),
    )  # fmt: skip
    if done:
        return done
    count = sum(int(np.prod(v.shape)) for v in params.values())
    ignored = (
        f"; {len(video_only)} video-only keys not used by the image model, kept for export: "
        f"{_families(video_only)}"
        if video_only
        else ""
    )
    return (
        f"converted SAM {release} {detected} ({len(params)} tensors, {count / 1e6:.1f}M "
        f"parameters) from {checkpoint} to {output}/ ({HEADER} + params/){ignored}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m weights_convert.convert_sam2",
        description="Convert Meta's SAM 2 / 2.1 .pt checkpoint to a resam-jax checkpoint directory.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="sam2.1_hiera_{tiny,small,base_plus,large}.pt",
    )
    parser.add_argument("--output", required=True, type=Path, help="checkpoint directory to create")
    parser.add_argument(
        "--model-type",
        default="auto",
        choices=("auto",) + RELEASED_TYPES,
        help="Hiera size; 'auto' (default) reads it from the tensor shapes",
    )
    args = parser.parse_args(argv)
    return run_cli(lambda: convert(args.checkpoint, args.output.resolve(), args.model_type))


if __name__ == "__main__":
    sys.exit(main())
