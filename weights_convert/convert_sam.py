"""Convert Meta's SAM checkpoint (sam_vit_{b,l,h}_*.pth), or transformers' (a model.safetensors
or the folder `save_pretrained` wrote), to a resam-jax checkpoint directory.

    python -m weights_convert.convert_sam --checkpoint sam_vit_b_01ec64.pth --output weights/sam_vit_b
    python -m weights_convert.convert_sam --checkpoint sam-vit-base/ --output weights/sam_vit_b

The model type is read from the tensor shapes (`--model-type auto`, the
default); naming one makes the converter check it. Converting into a directory
that already holds the same conversion is a no-op; one holding anything else
is refused, so nothing is ever overwritten.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from resam_jax.models.sam.architecture import MODEL_TYPES, sam_config
from resam_jax.models.sam.checkpoint import HEADER, CheckpointError, read_header, save_sam_params
from resam_jax.models.sam.params import (
    CheckpointMismatchError,
    check_params,
    detect_image_size,
    detect_model_type,
    torch_to_flax,
)
from weights_convert import hf_names


class ConversionError(Exception):
    """A user-facing conversion failure; the message says what to fix."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch checkpoint file as float32 numpy arrays."""
    import torch  # the only use of torch in resam-jax: reading Meta's files

    if not path.is_file():
        raise ConversionError(f"checkpoint file {path} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        # Keep the unpickler's reason, not torch's advice to load with weights_only=False.
        reason = str(e).rpartition("WeightsUnpickler error:")[2]
        reason = next((line.strip() for line in reason.splitlines() if line.strip()), "")
        raise ConversionError(
            f"cannot read {path} as a PyTorch checkpoint (truncated download or not a .pth file?): "
            f"{type(e).__name__}: {reason}"
        ) from None
    # Fine-tuning code often wraps the state_dict; accept the common wrappers.
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, Mapping) and isinstance(loaded.get(wrapper), Mapping):
            loaded = loaded[wrapper]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise ConversionError(
            f"{path} holds a {type(loaded).__name__}, not a state_dict of tensors"
        )
    return {k: v.detach().float().numpy() for k, v in loaded.items()}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a .safetensors file as float32 numpy arrays (no torch needed)."""
    import ml_dtypes  # noqa: F401  (gives numpy the bfloat16 of bfloat16 files)
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        loaded = load_file(path)
    except (SafetensorError, OSError, TypeError, ValueError) as e:
        raise ConversionError(
            f"cannot read {path} as a safetensors file (truncated download?): {e}"
        ) from None
    return {k: v.astype(np.float32) for k, v in loaded.items()}


def weights_file(checkpoint: Path) -> Path:
    """The file holding the tensors: `checkpoint` itself, or the model.safetensors of a folder
    written by transformers' `save_pretrained`."""
    if not checkpoint.is_dir():
        if not checkpoint.is_file():
            raise ConversionError(f"checkpoint file {checkpoint} does not exist")
        return checkpoint
    if (checkpoint / "model.safetensors").is_file():
        return checkpoint / "model.safetensors"
    raise ConversionError(
        f"{checkpoint} is a folder without model.safetensors; expected a folder written by "
        "transformers' save_pretrained (config.json + model.safetensors) or a checkpoint file"
    )


def read_sam_state_dict(weights: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """Meta's state_dict from a .pth or .safetensors file holding Meta's or transformers' names,
    and the keys that are neither."""
    if weights.suffix == ".safetensors":
        state_dict = read_safetensors(weights)
    else:
        state_dict = read_state_dict(weights)
    if hf_names.is_transformers_sam(state_dict):
        return hf_names.to_meta_names(state_dict)
    return state_dict, []


def convert(checkpoint: Path, output: Path, model_type: str = "auto") -> str:
    """Convert `checkpoint` into `output`; returns a one-line summary."""
    weights = weights_file(checkpoint)
    state_dict, not_sam = read_sam_state_dict(weights)
    params, unmapped = torch_to_flax(state_dict)
    unmapped = not_sam + unmapped
    detected = detect_model_type(params)
    if model_type == "auto":
        if detected is None:
            unexpected = ", ".join(unmapped[:20]) or "none"
            raise ConversionError(
                f"{checkpoint} is not a SAM state_dict: no image encoder of a known size "
                f"({', '.join(MODEL_TYPES)}) found. Keys that are not SAM's: {unexpected}"
            )
        model_type = detected
    elif detected is not None and detected != model_type:
        width = params["image_encoder", "patch_embed", "kernel"].shape[-1]
        raise ConversionError(
            f"{checkpoint} holds a SAM {detected} (encoder width {width}), "
            f"not the declared --model-type {model_type}"
        )
    # The input size follows from the shapes too: a fine-tuned SAM need not keep the default.
    image_size = detect_image_size(params)
    config = sam_config(model_type, **({"image_size": image_size} if image_size else {}))
    try:
        check_params(params, config, str(checkpoint), unmapped)
    except CheckpointMismatchError as e:
        raise ConversionError(str(e)) from None

    source = {"path": str(weights), "sha256": sha256(weights)}
    done = write_conversion(
        output, checkpoint, "SAM", source, model_type, read_header,
        lambda staging: save_sam_params(staging, params, config, source),
    )  # fmt: skip
    if done:
        return done
    count = sum(int(np.prod(v.shape)) for v in params.values())
    return f"converted SAM {model_type} ({count / 1e6:.1f}M parameters) from {checkpoint} to {output}/ ({HEADER} + params/)"


def write_conversion(
    output: Path,
    checkpoint: Path,
    family: str,
    source: Mapping[str, str],
    model_type: str,
    read_header: Callable[[Path], dict],
    save: Callable[[Path], None],
) -> str | None:
    """Writes a conversion of `checkpoint` into `output` by `save(directory)`: into a staging
    folder next to it, then renamed, so that an interrupted run leaves nothing half-written.
    An `output` that already holds this conversion (the same source file, the same model type)
    is left as it is: the no-op's message is returned. One that holds anything else is refused,
    so nothing is ever overwritten. `family` ("SAM", "SAM 2") and `read_header` are the
    family's."""
    if output.exists() and any(output.iterdir()):
        try:
            header = read_header(output)
        except CheckpointError:
            raise ConversionError(
                f"output directory {output} is not empty and holds no resam-jax {family} "
                "checkpoint; choose a new directory"
            ) from None
        if (
            header.get("source", {}).get("sha256") == source["sha256"]
            and header.get("model_type") == model_type
        ):
            return f"{output} already holds this conversion of {checkpoint} ({family} {model_type}); nothing to do"
        raise ConversionError(
            f"output directory {output} already holds a different checkpoint "
            f"({family} {header.get('model_type')} from {header.get('source', {}).get('path')}); "
            "choose a new directory or delete it"
        )
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        save(staging)
        if output.exists():
            output.rmdir()  # empty, checked above
        os.replace(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return None


def add_model_type_flag(parser: argparse.ArgumentParser, help: str) -> None:
    parser.add_argument("--model-type", default="auto", choices=("auto",) + MODEL_TYPES, help=help)


def run_cli(job: Callable[[], str]) -> int:
    """Prints what `job` returns (exit 0), or one `error:` line for a ConversionError (exit 2)."""
    try:
        print(job())
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m weights_convert.convert_sam",
        description="Convert Meta's SAM .pth checkpoint, or transformers' SamModel checkpoint, "
        "to a resam-jax (orbax) checkpoint directory.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="sam_vit_{b,l,h}_*.pth, a transformers model.safetensors, or a save_pretrained folder",
    )
    parser.add_argument("--output", required=True, type=Path, help="checkpoint directory to create")
    add_model_type_flag(parser, "SAM size; 'auto' (default) reads it from the tensor shapes")
    args = parser.parse_args(argv)
    return run_cli(lambda: convert(args.checkpoint, args.output.resolve(), args.model_type))


if __name__ == "__main__":
    sys.exit(main())
