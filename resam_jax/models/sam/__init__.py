"""Segment Anything in Flax NNX, with LoRA, and loading of Meta's converted checkpoints; `Sam`
is a resam_jax.models.Backbone and `build(config)` makes one from a run's config."""

from resam_jax.models.sam.architecture import MODEL_TYPES, SamConfig, sam_config
from resam_jax.models.sam.build import CONFIG_CHOICES, build
from resam_jax.models.sam.checkpoint import (
    CheckpointError,
    export_merged,
    load_sam,
    load_sam_params,
    save_sam_params,
)
from resam_jax.models.sam.params import CheckpointMismatchError
from resam_jax.models.sam.sam import (
    PIXEL_NORMS,
    Sam,
    decode_masks,
    normalize_pixels,
    postprocess_masks,
    upsample_logits,
)

__all__ = [
    "CONFIG_CHOICES",
    "MODEL_TYPES",
    "PIXEL_NORMS",
    "CheckpointError",
    "CheckpointMismatchError",
    "Sam",
    "build",
    "export_merged",
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
