"""SAM 2 / 2.1 image mode (Hiera trunk, FPN neck, SAM 2 prompt encoder and mask decoder)."""

from resam_jax.models.sam2.config import MODEL_TYPES, RELEASED_TYPES, Sam2Config, sam2_config
from resam_jax.models.sam2.model import Sam2, box_as_points, normalize_pixels

__all__ = [
    "MODEL_TYPES",
    "RELEASED_TYPES",
    "Sam2",
    "Sam2Config",
    "box_as_points",
    "normalize_pixels",
    "sam2_config",
]
