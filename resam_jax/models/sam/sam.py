"""The SAM model: `encode` images once, `decode` any number of prompts against the embedding."""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from resam_jax.models.sam.architecture import SamConfig
from resam_jax.models.sam.image_encoder import ImageEncoderViT
from resam_jax.models.sam.layers import resize_bilinear
from resam_jax.models.sam.mask_decoder import MaskDecoder
from resam_jax.models.sam.prompt_encoder import PromptEncoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
PIXEL_NORMS = ("sam", "unit")


def normalize_pixels(images: jax.Array, content_mask: jax.Array, mode: str = "sam") -> jax.Array:
    """uint8 RGB [..., S, S, 3] -> float32 encoder input, zero outside `content_mask` [..., S, S].

    "sam" is SAM's (x - mean) / std on 0..255, "unit" is x / 255 as the public
    ReSAM code feeds the encoder. Either way the padding is zero *after*
    normalisation, as SAM pads.
    """
    x = images.astype(jnp.float32)
    if mode == "sam":
        x = (x - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)
    elif mode == "unit":
        x = x / 255.0
    else:
        raise ValueError(f"pixel_norm={mode!r}; expected one of {PIXEL_NORMS}")
    return jnp.where(content_mask[..., None], x, 0.0)


def upsample_logits(logits: jax.Array, size: int) -> jax.Array:
    """Low-res mask logits [..., L, L] -> [..., size, size] (torch bilinear, align_corners=False)."""
    return resize_bilinear(logits, size, size)


def postprocess_masks(
    logits: jax.Array,
    image_size: int,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
) -> jax.Array:
    """SAM's postprocess_masks: upsample to the padded frame, crop the content, resize to the original."""
    x = upsample_logits(logits, image_size)[..., : input_size[0], : input_size[1]]
    return resize_bilinear(x, *original_size)


class Sam(nnx.Module):
    """Segment Anything, split into `encode` and `decode` so one embedding serves many prompts;
    `encode_pixels`, `decode_masks` and `features` are resam_jax.models.Backbone.

    `pixel_norm` (PIXEL_NORMS) is the pixel input the weights expect, for `encode_pixels`.
    """

    mask_threshold = 0.0

    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs, pixel_norm: str = "sam"):
        if pixel_norm not in PIXEL_NORMS:
            raise ValueError(f"pixel_norm={pixel_norm!r}; expected one of {PIXEL_NORMS}")
        self.config = config
        self.pixel_norm = pixel_norm
        self.image_encoder = ImageEncoderViT(config, rngs=rngs)
        self.prompt_encoder = PromptEncoder(config, rngs=rngs)
        self.mask_decoder = MaskDecoder(config, rngs=rngs)

    def encode(self, images: jax.Array) -> jax.Array:
        """Normalised images [B, S, S, 3] -> image embeddings [B, E, E, C]."""
        expected = (self.config.image_size, self.config.image_size, 3)
        if images.shape[1:] != expected:
            raise ValueError(f"images must be [B, {expected}], got {images.shape}")
        return self.image_encoder(images).astype(jnp.float32)

    def decode(
        self,
        embeddings: jax.Array,
        points: jax.Array | None = None,
        point_labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        mask_inputs: jax.Array | None = None,
        multimask_output: bool = False,
    ) -> tuple[jax.Array, jax.Array]:
        """Decode N prompts per image.

        Args:
          embeddings: [B, E, E, C] from `encode`.
          points: [B, N, P, 2] (x, y) in the S x S input frame; labels [B, N, P]
            with 1 positive, 0 negative, -1 padding.
          boxes: [B, N, 4] xyxy in the input frame.
          mask_inputs: [B, N, L, L] logits from an earlier decode.
          multimask_output: three masks per prompt instead of one.

        Returns:
          low-res logits [B, N, M, L, L] and IoU predictions [B, N, M].
        """
        prompts = [p for p in (points, boxes, mask_inputs) if p is not None]
        if not prompts:
            raise ValueError("decode needs at least one of points, boxes, mask_inputs")
        if (points is None) != (point_labels is None):
            raise ValueError("points and point_labels go together")
        b, n = prompts[0].shape[:2]

        def flat(x):
            return None if x is None else x.reshape(b * n, *x.shape[2:])

        sparse, dense = self.prompt_encoder(
            flat(points), flat(point_labels), flat(boxes), flat(mask_inputs)
        )
        logits, iou = self.mask_decoder(
            jnp.repeat(embeddings, n, axis=0),
            self.prompt_encoder.dense_pe(),
            sparse,
            dense,
            multimask_output,
        )
        return logits.reshape(b, n, *logits.shape[1:]), iou.reshape(b, n, -1)

    @property
    def feature_dim(self) -> int:
        return self.config.prompt_embed_dim

    def encode_pixels(self, images: jax.Array, content_mask: jax.Array) -> jax.Array:
        """uint8 RGB [B, S, S, 3], content mask [B, S, S] -> image embeddings [B, E, E, C]."""
        return self.encode(normalize_pixels(images, content_mask, self.pixel_norm))

    def decode_masks(
        self, embedding: jax.Array, prompts: Mapping[str, jax.Array]
    ) -> tuple[jax.Array, jax.Array]:
        """Single-mask decode in the input frame: (logits [B, N, S, S], IoU head [B, N])."""
        return decode_masks(self, embedding, self.config.image_size, **prompts)

    def features(self, embedding: jax.Array) -> tuple[jax.Array, int]:
        """The image embedding [B, E, E, C] itself, one cell per patch."""
        return embedding, self.config.patch_size


def decode_masks(
    model: Sam, embedding: jax.Array, image_size: int, **prompts: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Single-mask decode upsampled to the input frame: (logits [B, N, S, S], IoU head [B, N])."""
    logits, iou = model.decode(embedding, **prompts, multimask_output=False)
    return upsample_logits(logits[:, :, 0], image_size), iou[:, :, 0]
