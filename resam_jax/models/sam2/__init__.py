"""SAM 2 / 2.1 image mode (Hiera trunk, FPN neck, SAM 2 prompt encoder and mask decoder), with
LoRA on the Hiera attention; `Sam2` is a resam_jax.models.Backbone and `build(config)` makes one
from a run's config (config.model.family = "sam2")."""

from resam_jax.models.sam2.build import CONFIG_CHOICES, build, export_merged
from resam_jax.models.sam2.config import MODEL_TYPES, RELEASED_TYPES, Sam2Config, sam2_config
from resam_jax.models.sam2.model import Sam2, box_as_points, normalize_pixels

__all__ = [
    "CONFIG_CHOICES",
    "MODEL_TYPES",
    "RELEASED_TYPES",
    "Sam2",
    "Sam2Config",
    "box_as_points",
    "build",
    "export_merged",
    "normalize_pixels",
    "sam2_config",
]
