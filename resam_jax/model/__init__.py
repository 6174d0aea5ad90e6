"""Segment Anything in Flax NNX, with LoRA, and loading of Meta's converted checkpoints."""

from resam_jax.model.architecture import MODEL_TYPES, SamConfig, sam_config
from resam_jax.model.checkpoint import CheckpointError, load_sam, load_sam_params, save_sam_params
from resam_jax.model.params import CheckpointMismatchError
from resam_jax.model.sam import (
    PIXEL_NORMS,
    Sam,
    decode_masks,
    normalize_pixels,
    postprocess_masks,
    upsample_logits,
)

__all__ = [
    "MODEL_TYPES",
    "PIXEL_NORMS",
    "CheckpointError",
    "CheckpointMismatchError",
    "Sam",
    "SamConfig",
    "decode_masks",
    "load_sam",
    "load_sam_params",
    "normalize_pixels",
    "postprocess_masks",
    "sam_config",
    "save_sam_params",
    "upsample_logits",
]
