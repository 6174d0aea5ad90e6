"""SAM 2 from a run's config.model (family "sam2"): a converted checkpoint, or random weights if
none, with LoRA on the Hiera attention; and the adapted model exported with its LoRA folded in."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Mapping
from pathlib import Path

import ml_collections
import numpy as np
from flax import nnx

from resam_jax.models import ModelError
from resam_jax.models.sam2.checkpoint import (
    CheckpointError,
    load_sam2_params,
    load_video_only,
    read_header,
    sam2_from_params,
    save_sam2_params,
)
from resam_jax.models.sam2.config import (
    ATTENTION_IMPLEMENTATIONS,
    LORA_TARGETS,
    MODEL_TYPES,
    REMAT_OPTIONS,
    sam2_config,
)
from resam_jax.models.sam2.model import Sam2
from resam_jax.models.sam2.params import CheckpointMismatchError

# config.model.model_type: Meta's short names, or ours.
SHORT_NAMES = {"t": "hiera_t", "s": "hiera_s", "b+": "hiera_b+", "l": "hiera_l"}

# The values `build` accepts for each config.model field (resam_jax.models.config_choices).
CONFIG_CHOICES = {
    "model_type": (*SHORT_NAMES, *MODEL_TYPES),
    # "sam": SAM2Transforms' ImageNet mean / std on [0, 1] (what the weights expect); "unit": [0, 1]
    "pixel_norm": ("sam", "unit"),
    "dtype": ("float32", "bfloat16"),
    "attention": ATTENTION_IMPLEMENTATIONS,
    "remat": REMAT_OPTIONS,
    # Any non-empty choice of Hiera's fused qkv thirds, in that order.
    "lora_targets": tuple(
        c for r in range(1, len(LORA_TARGETS) + 1) for c in itertools.combinations(LORA_TARGETS, r)
    ),
}


def model_type_of(name: str) -> str:
    model_type = SHORT_NAMES.get(name, name)
    if model_type not in MODEL_TYPES:
        raise ModelError(
            f"config.model.model_type={name!r} is not a SAM 2 size; expected one of "
            f"{tuple(SHORT_NAMES)} (or {MODEL_TYPES})"
        )
    return model_type


def build(config: ml_collections.ConfigDict) -> Sam2:
    """SAM 2 with LoRA from config.model (model_type t | s | b+ | l, checkpoint, lora_rank,
    lora_start_layer, lora_targets (default q, v), dtype and the memory options) for
    config.data.image_size inputs fed config.model.pixel_norm; a ModelError says how to fix
    missing or mismatched weights."""
    model_config = config.model
    model_type = model_type_of(model_config.model_type)
    options = dict(
        lora_rank=model_config.lora_rank,
        lora_start_layer=model_config.lora_start_layer,
        lora_targets=tuple(model_config.get("lora_targets", ("q", "v"))),
        dtype=model_config.dtype,
        attention=model_config.get("attention", "reference"),
        attention_chunk_size=model_config.get("attention_chunk_size", 1024),
        remat=model_config.get("remat", "none"),
    )
    image_size = config.data.image_size
    pixel_norm = model_config.get("pixel_norm", "sam")
    if not model_config.checkpoint:
        logging.warning(
            "config.model.checkpoint is empty: SAM 2 %s is RANDOMLY INITIALISED (no pretrained "
            "weights); its scores only show that the pipeline runs.", model_type
        )  # fmt: skip
        try:
            sam2 = sam2_config(model_type, image_size=image_size, **options)
        except ValueError as e:  # a field out of range for this size (image_size, ...)
            raise ModelError(f"config.model: {e}") from None
        return Sam2(sam2, rngs=nnx.Rngs(config.seed), pixel_norm=pixel_norm)
    directory = Path(model_config.checkpoint).expanduser()
    if not directory.exists():
        raise ModelError(
            f"no converted SAM 2 checkpoint at {directory} (config.model.checkpoint). Convert "
            "Meta's file once: python -m weights_convert.convert_sam2 --checkpoint "
            f"sam2.1_hiera_base_plus.pt --output {directory}"
        )
    try:
        stored, params = load_sam2_params(directory)
    except (CheckpointError, CheckpointMismatchError) as e:
        raise ModelError(str(e)) from None
    if stored.model_type != model_type:
        raise ModelError(
            f"{directory} holds SAM 2 {stored.model_type}, but config.model.model_type="
            f"{model_config.model_type!r}; point config.model.checkpoint at a converted "
            f"{model_type} or set --config.model.model_type={stored.model_type}"
        )
    if stored.image_size != image_size:
        raise ModelError(
            f"{directory} is a SAM 2 for {stored.image_size}x{stored.image_size} inputs but "
            f"config.data.image_size={image_size}; set --config.data.image_size={stored.image_size}"
        )
    try:
        adapted = dataclasses.replace(stored, **options)
    except ValueError as e:  # a field out of range for the stored size (lora_start_layer, ...)
        raise ModelError(f"config.model: {e}") from None
    model = sam2_from_params(adapted, params, config.seed)
    model.pixel_norm = pixel_norm
    return model


def merged_params(model: Sam2) -> dict[tuple, np.ndarray]:
    """The model's parameters (Flax path -> array) with each LoRA update folded into its qkv
    kernel: x @ W + [x A_q B_q, x A_k B_k, x A_v B_v] = x @ (W + [A_q B_q, A_k B_k, A_v B_v])."""
    _, lora, frozen = nnx.split(model, nnx.LoRAParam, ...)
    params = {p: np.array(v.get_value()) for p, v in nnx.to_flat_state(frozen)}
    adapters = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(lora)}
    for path in sorted({p[:-1] for p in adapters}):  # (..., "attn", "lora_q")
        attn, name = path[:-1], path[-1]
        kernel = params[attn + ("qkv", "kernel")]
        dim_out = kernel.shape[1] // 3
        third = "qkv".index(name[-1])
        delta = adapters[path + ("lora_a",)] @ adapters[path + ("lora_b",)]
        kernel[:, third * dim_out : (third + 1) * dim_out] += delta.astype(kernel.dtype)
    return params


def export_merged(model: Sam2, directory: str | Path, source: Mapping) -> None:
    """`model` with its LoRA folded in, as a converted SAM 2 checkpoint (no LoRA) that load_sam2,
    build and the prediction commands read; `source` goes to the header.

    When source["path"] is the converted checkpoint the model was built from, its video-only
    tensors (and its release) go with the export, so that weights_convert.export_sam2 writes a
    file that `sam2`'s build_sam2 loads strictly, as it loads Meta's."""
    config = dataclasses.replace(model.config, lora_rank=None, lora_start_layer=None)
    source = dict(source)
    video_only = {}
    origin = Path(str(source.get("path", ""))).expanduser()
    if source.get("path") and origin.is_dir():
        try:
            release = read_header(origin).get("source", {}).get("release")
        except CheckpointError:  # not a SAM 2 checkpoint: nothing to carry
            release = None
        else:
            video_only = load_video_only(origin)
        if release is not None:
            source.setdefault("release", release)
    save_sam2_params(directory, merged_params(model), config, source, video_only)
