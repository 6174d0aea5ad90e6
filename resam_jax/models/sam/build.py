"""SAM from a run's config.model: a converted checkpoint, or random weights if none."""

from __future__ import annotations

import logging
from pathlib import Path

import ml_collections
from flax import nnx

from resam_jax.models import ModelError
from resam_jax.models.sam.architecture import (
    ATTENTION_IMPLEMENTATIONS,
    MODEL_TYPES,
    REMAT_OPTIONS,
    sam_config,
)
from resam_jax.models.sam.checkpoint import CheckpointError, conversion_help, load_sam
from resam_jax.models.sam.params import CheckpointMismatchError
from resam_jax.models.sam.sam import PIXEL_NORMS, Sam

# The values `build` accepts for each config.model field (resam_jax.models.config_choices).
CONFIG_CHOICES = {
    "model_type": MODEL_TYPES,
    "pixel_norm": PIXEL_NORMS,
    "dtype": ("float32", "bfloat16"),
    "attention": ATTENTION_IMPLEMENTATIONS,
    "remat": REMAT_OPTIONS,
    "lora_targets": (("q", "v"),),  # ReSAM's LoRA_Sam: q and v of each block's qkv
}


def build(config: ml_collections.ConfigDict) -> Sam:
    """SAM with LoRA from config.model for config.data.image_size inputs, fed the pixel input
    of config.model.pixel_norm; a ModelError says how to fix missing or mismatched weights."""
    model_config = config.model
    # The LoRA, the computation dtype and the memory options: what a checkpoint does not fix.
    options = dict(
        lora_rank=model_config.lora_rank,
        lora_start_layer=model_config.lora_start_layer,
        dtype=model_config.dtype,
        attention=model_config.attention,
        attention_chunk_size=model_config.attention_chunk_size,
        remat=model_config.remat,
    )
    image_size = config.data.image_size
    if not model_config.checkpoint:
        logging.warning(
            "config.model.checkpoint is empty: SAM %s is RANDOMLY INITIALISED (no pretrained "
            "weights); its scores only show that the pipeline runs.", model_config.model_type
        )  # fmt: skip
        try:
            sam = sam_config(model_config.model_type, image_size=image_size, **options)
        except ValueError as e:  # a field out of range for this size (lora_start_layer, ...)
            raise ModelError(f"config.model: {e}") from None
        return Sam(sam, rngs=nnx.Rngs(config.seed), pixel_norm=model_config.pixel_norm)
    directory = Path(model_config.checkpoint).expanduser()
    if not directory.exists():
        raise ModelError(
            f"no converted SAM checkpoint at {directory} (config.model.checkpoint). "
            + conversion_help(directory, model_config.model_type)
        )
    try:
        model = load_sam(directory, **options)
    except (CheckpointError, CheckpointMismatchError) as e:
        raise ModelError(str(e)) from None
    except ValueError as e:  # a field out of range for the stored size (lora_start_layer, ...)
        raise ModelError(f"config.model: {e}") from None
    if model.config.model_type != model_config.model_type:
        raise ModelError(
            f"{directory} holds SAM {model.config.model_type}, but config.model.model_type="
            f"{model_config.model_type!r}; point config.model.checkpoint at a converted "
            f"{model_config.model_type} or set --config.model.model_type={model.config.model_type}"
        )
    if model.config.image_size != image_size:
        raise ModelError(
            f"{directory} is a SAM for {model.config.image_size}x{model.config.image_size} inputs but "
            f"config.data.image_size={image_size}; set --config.data.image_size={model.config.image_size}"
        )
    model.pixel_norm = model_config.pixel_norm
    return model
