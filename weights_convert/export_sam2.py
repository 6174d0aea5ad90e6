"""Export a resam-jax SAM 2 checkpoint back to Meta's format (a .pt holding {"model": state_dict}).

    python -m weights_convert.export_sam2 --checkpoint weights/sam2.1_hiera_b+ \\
        --output sam2.1_hiera_base_plus_adapted.pt

`build_sam2("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus_adapted.pt")` loads
the file strictly: the image-model tensors come from the checkpoint, the video-only ones are
those the conversion kept, bit for bit. An existing file is never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from resam_jax.models.sam2.checkpoint import (
    CheckpointError,
    load_sam2_params,
    load_video_only,
    read_header,
)
from resam_jax.models.sam2.config import CHECKPOINT_NAMES
from resam_jax.models.sam2.params import CheckpointMismatchError, flax_to_torch
from weights_convert.convert_sam import ConversionError, run_cli


def write_checkpoint(state_dict: dict, output: Path) -> None:
    """torch.save({"model": ...}) under a temporary name beside `output`, then rename."""
    import torch

    output.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(handle)
    try:
        torch.save({"model": {k: torch.from_numpy(v) for k, v in state_dict.items()}}, staging)
        os.replace(staging, output)
    except OSError as e:  # a full disk, a read-only folder: say so
        raise ConversionError(f"cannot write {output}: {e}") from None
    finally:
        if os.path.exists(staging):
            os.remove(staging)


def export(checkpoint: Path, output: Path) -> str:
    """Write `checkpoint` to `output`; returns a one-line summary with how to load it."""
    if output.exists():
        raise ConversionError(f"{output} already exists; choose a new path or delete it")
    try:
        release = read_header(checkpoint).get("source", {}).get("release")
        config, params = load_sam2_params(checkpoint)
    except (CheckpointError, CheckpointMismatchError) as e:
        raise ConversionError(str(e)) from None
    state_dict = flax_to_torch(params)
    video = load_video_only(checkpoint)
    write_checkpoint({**state_dict, **video}, output)
    size = config.model_type.removeprefix("hiera_")
    if not video:
        hint = (
            "it holds the image model only (the source had no video keys): load it with "
            "model.load_state_dict(torch.load(path)['model'], strict=False)"
        )
    elif config.model_type in CHECKPOINT_NAMES:
        yaml = f"sam2/sam2_hiera_{size}" if release == "2.0" else f"sam2.1/sam2.1_hiera_{size}"
        hint = f'load it with build_sam2("configs/{yaml}.yaml", "{output}")'
    else:
        hint = "build SAM2Base with this checkpoint's sam_checkpoint.json config, then load it"
    return f"exported SAM 2 {config.model_type} from {checkpoint} to {output}; {hint}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m weights_convert.export_sam2",
        description="Export a resam-jax SAM 2 checkpoint to a sam2 .pt file.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="converted checkpoint dir")
    parser.add_argument("--output", required=True, type=Path, help="OUT.pt to create")
    args = parser.parse_args(argv)
    return run_cli(lambda: export(args.checkpoint, args.output.resolve()))


if __name__ == "__main__":
    sys.exit(main())
