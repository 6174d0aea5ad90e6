"""Converted SAM 2 checkpoints: an orbax tree of the image model's parameters, the video-only
tensors kept aside (so an export loads strictly in `sam2`), and a small JSON header.

    DIR/sam_checkpoint.json   {"format": "resam-jax/sam2/1", "model_type", "config", "source"}
    DIR/params/               orbax StandardCheckpointer tree (nested dict of float32 arrays)
    DIR/video_only.npz        Meta's video-only tensors by torch key, untouched (may be absent)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from resam_jax.models import checkpoint_files
from resam_jax.models.checkpoint_files import HEADER
from resam_jax.models.checkpoint_files import CheckpointError as CheckpointError  # re-exported
from resam_jax.models.sam.image_encoder import lora_a_init
from resam_jax.models.sam2.config import Sam2Config, sam2_config
from resam_jax.models.sam2.model import Sam2
from resam_jax.models.sam2.params import check_params

FORMAT = "resam-jax/sam2/1"
VIDEO_ONLY = "video_only.npz"


def not_a_sam2_checkpoint(directory: Path) -> str:
    return (
        f"{directory} is not a converted SAM 2 checkpoint: {directory / HEADER} is missing. "
        "Convert Meta's file once: python -m weights_convert.convert_sam2 --checkpoint "
        f"sam2.1_hiera_base_plus.pt --output {directory}"
    )


def read_header(directory: str | Path) -> dict:
    """A converted SAM 2 checkpoint's header (CheckpointError if it is none)."""
    return checkpoint_files.read_header(directory, FORMAT, not_a_sam2_checkpoint)


def save_sam2_params(
    directory: str | Path,
    params: Mapping[tuple, np.ndarray],
    config: Sam2Config,
    source: Mapping[str, object],
    video_only: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write converted parameters (Flax path -> array) and the video-only tensors."""
    check_params(params, config, str(source.get("path", "parameters")))
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if video_only:
        np.savez(directory / VIDEO_ONLY, **video_only)
    checkpoint_files.write_params(directory, params, config, source, FORMAT)  # the header last


def load_sam2_params(directory: str | Path) -> tuple[Sam2Config, dict[tuple, np.ndarray]]:
    """A checkpoint directory's config and parameters (Flax path -> array)."""
    directory = Path(directory).resolve()
    header = read_header(directory)
    config, params = checkpoint_files.read_params(directory, header, Sam2Config, sam2_config)
    check_params(params, config, str(directory))
    return config, params


def load_video_only(directory: str | Path) -> dict[str, np.ndarray]:
    """The video-only tensors the conversion kept (empty if the source had none)."""
    path = Path(directory) / VIDEO_ONLY
    if not path.is_file():
        return {}
    with np.load(path) as stored:
        return {k: stored[k] for k in stored.files}


def sam2_from_params(
    config: Sam2Config, params: Mapping[tuple, np.ndarray], lora_seed: int = 0
) -> Sam2:
    """A Sam2 built abstractly and filled with `params` (every variable), never drawn at random;
    the LoRA of `config` (absent from a checkpoint) starts as LoRA starts: A drawn with
    torch's kaiming_uniform(a=sqrt(5)) from `lora_seed`, B zero."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Sam2(config, rngs=nnx.Rngs(0))))
    key = jax.random.key(lora_seed)
    flat = []
    for i, (path, v) in enumerate(nnx.to_flat_state(state)):
        dtype = v.get_value().dtype
        if path not in params and isinstance(v, nnx.LoRAParam):
            shape = v.get_value().shape
            value = (
                lora_a_init(jax.random.fold_in(key, i), shape, dtype)
                if path[-1] == "lora_a"
                else jax.numpy.zeros(shape, dtype)
            )
        else:
            value = jax.numpy.asarray(params[path], dtype)
        flat.append((path, v.replace(value)))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_sam2(directory: str | Path, **overrides) -> Sam2:
    """A Sam2 with the weights of a converted checkpoint; `overrides` may change the fields that
    do not alter the weights: dtype, the memory options and the LoRA (which starts fresh)."""
    allowed = {
        "dtype",
        "attention",
        "attention_chunk_size",
        "remat",
        "lora_rank",
        "lora_start_layer",
        "lora_targets",
    }
    if unknown := set(overrides) - allowed:
        raise ValueError(f"load_sam2 cannot override {sorted(unknown)}; only {sorted(allowed)}")
    config, params = load_sam2_params(directory)
    return sam2_from_params(dataclasses.replace(config, **overrides), params)
