"""The backbone contract: what resam_jax.method needs of a model family, and no more.

A family lives in its own folder (sam/: Segment Anything, sam2/: SAM 2.1) with its modules,
its weight mapping and its checkpoints, a `build(config)`, an `export_merged` and its
`CONFIG_CHOICES` (the values it accepts for each config.model field); the method and the run
reach it only through this module (`Backbone` below, `build`, `config_choices`,
`export_merged`), so a second family is a second folder. A Backbone is an nnx.Module whose
trainable adapters are `LORA` variables: `nnx.split(model, LORA, ...)` gives the LoRA the
method trains and the frozen rest.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import jax
import ml_collections
from flax import nnx

# The variables the method trains; everything else stays frozen.
LORA = nnx.LoRAParam
# The families `build` knows, each the name of its folder (config.model.family, default "sam"):
# SAM (ViT) and SAM 2 / 2.1 (Hiera).
FAMILIES = ("sam", "sam2")

# A family's image embedding: an opaque pytree the method only passes around.
Embedding = Any
# One decode's prompts: {"points" [B, N, P, 2], "point_labels" [B, N, P]} or {"boxes" [B, N, 4]}.
Prompts = Mapping[str, jax.Array]


class Backbone(Protocol):
    """A promptable segmenter, split into one image encoding and any number of decodes."""

    @property
    def feature_dim(self) -> int:
        """C of `features`: the width of Reinforce's instance features."""

    def encode_pixels(self, images: jax.Array, content_mask: jax.Array) -> Embedding:
        """uint8 RGB [B, S, S, 3], bool [B, S, S] (the image's pixels, not the padding) -> the
        embedding. The family normalises the pixels as its weights expect."""

    def decode_masks(self, embedding: Embedding, prompts: Prompts) -> tuple[jax.Array, jax.Array]:
        """One mask per prompt: (logits [B, N, S, S] in the input frame, predicted IoU [B, N])."""

    def features(self, embedding: Embedding) -> tuple[jax.Array, int]:
        """(feature map [B, H, W, C] that Reinforce pools instance boxes from, its stride in
        input pixels)."""


class ModelError(Exception):
    """A backbone the config asks for cannot be built (missing or mismatched weights); the
    message says what to do."""


def _family(config: ml_collections.ConfigDict):
    family = config.model.get("family", "sam")
    if family not in FAMILIES:
        raise ModelError(f"config.model.family={family!r}; expected one of {FAMILIES}")
    return importlib.import_module(f"{__name__}.{family}")


def config_choices(config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """The values config.model.family accepts for each of its config.model fields (model_type,
    pixel_norm, attention, remat, lora_targets, ...), for checking a run's config before
    anything is built: field name within config.model -> allowed values."""
    return dict(_family(config).CONFIG_CHOICES)


def build(config: ml_collections.ConfigDict) -> Backbone:
    """The backbone of config.model with its LoRA, for config.data.image_size inputs: the
    family's `build` (a converted checkpoint, or random weights)."""
    return _family(config).build(config)


def export_merged(
    config: ml_collections.ConfigDict, model: Backbone, directory: str | Path, source: Mapping
) -> None:
    """`model` with its LoRA folded in, as a checkpoint of its family that `build` loads
    (config.model.checkpoint) and the prediction commands read; `source` goes to its header.
    source["path"] names the checkpoint the model was built from: a family may carry what it
    kept beside the weights into the export (SAM 2: the video-only tensors, so that the
    exported file loads strictly in `sam2`)."""
    _family(config).export_merged(model, directory, source)
