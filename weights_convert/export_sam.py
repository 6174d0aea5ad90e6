"""Export a resam-jax SAM checkpoint back to Meta's PyTorch format (a .pth state_dict).

    python -m weights_convert.export_sam --checkpoint runs/nwpu/export/sam_merged \\
        --output adapted_sam_vit_b.pth
    python -m weights_convert.export_sam --checkpoint weights/sam_vit_b \\
        --lora runs/nwpu/export/lora --output adapted_sam_vit_b.pth

`segment_anything.sam_model_registry["vit_b"](checkpoint="adapted_sam_vit_b.pth")` loads the
file as is. A run's `export/sam_merged` has its LoRA folded into the qkv weights already; a
base checkpoint plus `--lora` (the run's `export/lora`) is folded here. `--model-type` checks
the checkpoint's SAM size. The file is written under a temporary name and renamed, and an
existing file is never overwritten.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from resam_jax.files import staged
from resam_jax.models.sam.architecture import SamConfig, sam_config
from resam_jax.models.sam.checkpoint import (
    CheckpointError,
    fold_lora,
    load_lora,
    load_sam_params,
    read_header,
)
from resam_jax.models.sam.params import CheckpointMismatchError, flax_to_torch
from weights_convert.convert_sam import ConversionError, add_model_type_flag, run_cli

# The sizes segment_anything.sam_model_registry builds (with SAM's 1024 input).
REGISTRY_TYPES = ("vit_b", "vit_l", "vit_h")


def _check_model_type(checkpoint: Path, config: SamConfig, expected: str) -> None:
    if expected not in ("auto", config.model_type):
        raise ConversionError(
            f"{checkpoint} holds a SAM {config.model_type} (encoder width "
            f"{config.encoder_embed_dim}, {config.encoder_depth} blocks), not the expected "
            f"--model-type {expected}"
        )


def write_state_dict(state_dict: dict, output: Path) -> None:
    """torch.save under a temporary name beside `output`, then rename: never half-written."""
    import torch

    try:
        with staged(output) as staging:
            torch.save({k: torch.tensor(v) for k, v in state_dict.items()}, staging)
    except OSError as e:  # a full disk, a read-only folder: say so
        raise ConversionError(f"cannot write {output}: {e}") from None


def _in_registry(config: SamConfig) -> bool:
    """Whether sam_model_registry builds this architecture (LoRA and dtype are not exported)."""
    if config.model_type not in REGISTRY_TYPES:
        return False
    registry = sam_config(config.model_type)
    return registry == dataclasses.replace(
        config, lora_rank=registry.lora_rank, lora_start_layer=None, dtype=registry.dtype
    )


def _loading_hint(config: SamConfig, pixel_norm: str | None, output: Path) -> str:
    """How to load the file in segment-anything, and the pixel input the weights expect."""
    if _in_registry(config):
        hint = f'sam_model_registry["{config.model_type}"](checkpoint="{output}")'
    else:
        hint = (
            f"SAM {config.model_type} is not in sam_model_registry: build "
            "segment_anything.modeling.Sam with this checkpoint's sam_checkpoint.json config, "
            "then load_state_dict"
        )
    if pixel_norm == "unit":
        hint += (
            "; the weights were adapted to [0, 1] pixels (model.pixel_norm='unit'): set "
            "sam.pixel_mean.zero_() and sam.pixel_std.fill_(255.0) before predicting"
        )
    return hint


def export(checkpoint: Path, output: Path, model_type: str = "auto", lora: Path | None = None):
    """Write `checkpoint` (with `lora` folded in) to `output`; returns a one-line summary."""
    if output.exists():
        raise ConversionError(f"{output} already exists; choose a new path or delete it")
    try:
        header = read_header(checkpoint)
        config, params = load_sam_params(checkpoint)
        _check_model_type(checkpoint, config, model_type)
        if lora is not None:
            params = fold_lora(params, load_lora(lora), source=str(lora))
    except (CheckpointError, CheckpointMismatchError) as e:
        raise ConversionError(str(e)) from None
    write_state_dict(flax_to_torch(params), output)
    # A run's merged export records the pixel input it was adapted to; a LoRA export does not.
    pixel_norm = None if lora else header.get("source", {}).get("pixel_norm")
    folded = f" with the LoRA of {lora} folded in" if lora else ""
    return (
        f"exported SAM {config.model_type} from {checkpoint}{folded} to {output}. "
        f"Load it with {_loading_hint(config, pixel_norm, output)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m weights_convert.export_sam",
        description="Export a resam-jax SAM checkpoint to a segment-anything .pth state_dict.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="converted or merged checkpoint directory (e.g. a run's export/sam_merged)",
    )
    parser.add_argument(
        "--lora", type=Path, help="a run's export/lora, folded into --checkpoint's qkv weights"
    )
    parser.add_argument("--output", required=True, type=Path, help="OUT.pth to create")
    add_model_type_flag(
        parser, "SAM size the checkpoint must hold; 'auto' (default) takes the checkpoint's"
    )
    args = parser.parse_args(argv)
    return run_cli(
        lambda: export(args.checkpoint, args.output.resolve(), args.model_type, args.lora)
    )


if __name__ == "__main__":
    sys.exit(main())
