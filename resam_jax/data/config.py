"""The data configuration: what the pipeline reads from config.data, as frozen dataclasses.

The bottom of the data package: it imports nothing of the project, so resam_jax/config.py
(the run configuration every configs/*.py starts from) can take its data defaults from here
without importing the pipeline. `ViewConfig` says how one sample is made (resam_jax.data.views),
`DataConfig` adds where samples come from and how they are batched (resam_jax.data.pipeline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

Pad = Literal["center", "bottom_right"]
TRAIN_IMAGES = ("all", "first_half", "second_half")
# The 15 ImageNet-C corruptions (resam_jax.data.corruptions implements them) and severities.
CORRUPTIONS = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
SEVERITIES = (1, 2, 3, 4, 5)


NegativePoints = Literal["frame", "content"]


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """How one sample is made (resam_jax.data.pipeline.DataConfig adds where samples come from)."""

    image_size: int = 1024  # S: longest side after resize, and the padded square
    pad: Pad = "center"  # "center" (public ReSAM code) | "bottom_right" (SAM)
    max_instances: int = 50  # N: instance slots per sample
    num_points: int = 1  # P: positive (and as many negative) points per instance
    # Negatives uniform over the whole padded S x S frame outside the mask, padding included
    # (public code), or over the image content only.
    negative_points: NegativePoints = "frame"
    flip_probability: float = 0.5  # albumentations Flip default
    strong_probability: float = 0.5  # each photometric augmentation
    # Photometric augmentations on the image at its original resolution, then the resize (public
    # code), or on the resized image.
    strong_before_resize: bool = True
    # An ImageNet-C corruption (resam_jax.data.corruptions.CORRUPTIONS; "" = none) at a severity
    # 1-5, applied to the source image before anything else, the same for an image every time.
    corruption: str = ""
    corruption_severity: int = 3

    def __post_init__(self):
        if self.corruption and self.corruption not in CORRUPTIONS:
            raise ValueError(
                f"unknown corruption {self.corruption!r}; expected one of: {', '.join(CORRUPTIONS)}"
            )
        if self.corruption_severity not in SEVERITIES:
            raise ValueError(
                f"corruption_severity must be an integer in 1-5, got {self.corruption_severity!r}"
            )
        if self.pad not in ("center", "bottom_right"):
            raise ValueError(f"pad must be 'center' or 'bottom_right', got {self.pad!r}")
        if self.negative_points not in ("frame", "content"):
            raise ValueError(
                f"negative_points must be 'frame' or 'content', got {self.negative_points!r}"
            )
        for name in ("image_size", "max_instances", "num_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class DataConfig(ViewConfig):
    """Where samples come from and how they are batched; the ViewConfig fields say how each
    sample is made."""

    dataset: str = "nwpu_vhr10"  # nwpu_vhr10 | whu_building | hrsid | coco_instances
    # hrsid: inshore | offshore | all; coco_instances: the name it was built with
    dataset_config: str = "default"
    data_dir: str = "~/tensorflow_datasets"
    host_batch_size: int = (
        1  # samples per batch of THIS process (the run's data.batch_size is global)
    )
    num_epochs: int | None = None  # training passes; None repeats until the trainer stops
    worker_count: int = 0  # grain worker processes; 0 works in the calling process
    read_threads: int = 2  # threads per process producing batches
    prefetch_batches: int = 2  # batches buffered per process
    # Which training images to use: all, or one half of them (a seeded split of the image ids,
    # train_image_halves): the study pretrains SAM on one half and adapts it on the other.
    train_images: str = "all"  # "all" | "first_half" | "second_half"
    # Native-resolution tiles (resam_jax.data.tiles): 0 = each sample is a whole image resized
    # to image_size (the published protocol); T > 0 = overlapping T x T windows of the image
    # at its own resolution, every instance in exactly one, for training and evaluation alike.
    tile_size: int = 0
    tile_stride: int = 0  # pixels between window starts; 0 = 2 * tile_size // 3
    # Tiles of a corrupted scene: each image is corrupted once per process and kept, for its
    # other tiles, epochs and prompt draws, up to this many MiB (least recently used out first;
    # the corruption is a function of the image and its id, so a kept one is exact); 0 corrupts
    # the whole image again for every tile (zoom_blur:5 of a 1000 px image takes about 2 s).
    corruption_cache_mb: int = 1024

    def __post_init__(self):
        super().__post_init__()
        if self.train_images not in TRAIN_IMAGES:
            raise ValueError(
                f"train_images must be one of {TRAIN_IMAGES}, got {self.train_images!r}"
            )
        for name in ("host_batch_size", "read_threads", "prefetch_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.worker_count < 0:
            raise ValueError(f"worker_count must be >= 0, got {self.worker_count}")
        if self.corruption_cache_mb < 0:
            raise ValueError(f"corruption_cache_mb must be >= 0, got {self.corruption_cache_mb}")
        if self.tile_size < 0:
            raise ValueError(f"tile_size must be >= 0 (0 = whole images), got {self.tile_size}")
        if not 0 <= self.tile_stride <= self.tile_size:
            raise ValueError(
                f"tile_stride must be in 0..tile_size={self.tile_size} (0 = two thirds of a tile), "
                f"got {self.tile_stride}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> DataConfig:
        """From an ml_collections.ConfigDict (`.to_dict()`) or a plain dict; unknown keys are an error."""
        values = dict(values.to_dict() if hasattr(values, "to_dict") else values)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown data config fields: {sorted(unknown)}")
        return cls(**values)
