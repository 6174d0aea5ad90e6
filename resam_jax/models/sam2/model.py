"""SAM 2 / 2.1 in image mode: the path of SAM2ImagePredictor (forward_image, no_mem_embed added to
the stride-16 level, conv_s0 / conv_s1 high-resolution features), split into encode and decode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from resam_jax.models.sam2.config import Sam2Config
from resam_jax.models.sam2.hiera import Hiera
from resam_jax.models.sam2.mask_decoder import MaskDecoder
from resam_jax.models.sam2.neck import FpnNeck
from resam_jax.models.sam2.prompt_encoder import BOX_BOTTOM_RIGHT, BOX_TOP_LEFT, PromptEncoder

# SAM2Transforms: ToTensor ([0, 1]) then ImageNet normalisation.
PIXEL_MEAN = (0.485, 0.456, 0.406)
PIXEL_STD = (0.229, 0.224, 0.225)


def normalize_pixels(images: jax.Array) -> jax.Array:
    """[..., 3] RGB in [0, 1] -> the encoder's input."""
    return (images - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)


def box_as_points(
    boxes: jax.Array, points: jax.Array | None = None, labels: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Boxes [n, 4] xyxy as SAM2ImagePredictor passes them: two corner points labelled 2 and 3,
    placed before the clicks [n, P, 2] (labels [n, P]) if any."""
    corners = boxes.reshape(-1, 2, 2)
    corner_labels = jnp.broadcast_to(
        jnp.asarray([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], jnp.int32), corners.shape[:2]
    )
    if points is None:
        return corners, corner_labels
    return (
        jnp.concatenate([corners, points.astype(corners.dtype)], axis=1),
        jnp.concatenate([corner_labels, labels.astype(jnp.int32)], axis=1),
    )


class ImageEncoder(nnx.Module):
    """Hiera trunk + FPN neck: images -> [L0 @ S/4, L1 @ S/8, L2 @ S/16], d_model wide."""

    def __init__(self, config: Sam2Config, *, rngs: nnx.Rngs):
        self.trunk = Hiera(config, rngs=rngs)
        self.neck = FpnNeck(config, rngs=rngs)

    def __call__(self, images: jax.Array) -> list[jax.Array]:
        return self.neck(self.trunk(images))


class Sam2(nnx.Module):
    """SAM 2 image model. `encode` once per image, `decode` per set of prompts."""

    def __init__(self, config: Sam2Config, *, rngs: nnx.Rngs, pixel_norm: str = "sam"):
        self.config = config
        # The pixel input of the Backbone contract's encode_pixels: "sam" is SAM2Transforms'
        # ImageNet normalisation (= SAM's mean / std on 0..255), "unit" [0, 1].
        self.pixel_norm = pixel_norm
        self.image_encoder = ImageEncoder(config, rngs=rngs)
        self.prompt_encoder = PromptEncoder(config, rngs=rngs)
        self.mask_decoder = MaskDecoder(config, rngs=rngs)
        # Meta's layout [1, 1, C]; image mode adds it to the stride-16 level ("no memory").
        self.no_mem_embed = nnx.Param(
            0.02 * jax.random.normal(rngs.params(), (1, 1, config.d_model))
        )

    def encode(self, images: jax.Array) -> dict:
        """Normalised images [B, S, S, 3] -> {"image_embed": [B, E, E, C],
        "high_res_feats": ([B, 4E, 4E, C/8], [B, 2E, 2E, C/4])} (SAM2ImagePredictor._features)."""
        level0, level1, level2 = self.image_encoder(images)
        decoder = self.mask_decoder
        return {
            "image_embed": level2 + self.no_mem_embed[...][0].astype(level2.dtype),
            "high_res_feats": (decoder.conv_s0(level0), decoder.conv_s1(level1)),
        }

    def embed_prompts(
        self,
        points: jax.Array | None = None,
        labels: jax.Array | None = None,
        boxes: jax.Array | None = None,
        mask_input: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """n prompt sets -> sparse [n, T, C], dense [n, E, E, C], as SAM2ImagePredictor: a box
        is two corner points before the clicks, followed by one padding token."""
        if boxes is not None:
            points, labels = box_as_points(boxes, points, labels)
        return self.prompt_encoder(points, labels, None, mask_input)

    def decode(
        self,
        features: dict,
        sparse: jax.Array,
        dense: jax.Array,
        *,
        multimask_output: bool,
        dynamic_multimask: bool = False,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """n prompt sets against `features` of one image (repeated, the predictor's batched
        mode) or of n images -> (low-res logits [n, m, 4E, 4E], IoU [n, m], output token
        [n, m, C], object-score logits [n, 1]), m = 3 with `multimask_output`, else 1."""
        return self.mask_decoder(
            features["image_embed"],
            self.prompt_encoder.dense_pe(),
            sparse,
            dense,
            features["high_res_feats"],
            multimask_output=multimask_output,
            repeat_image=features["image_embed"].shape[0] != sparse.shape[0],
            dynamic_multimask=dynamic_multimask,
        )

    # The Backbone contract (resam_jax.models): what the method needs, with SAM 2's image path.

    @property
    def feature_dim(self) -> int:
        return self.config.d_model

    def encode_pixels(self, images: jax.Array, content_mask: jax.Array) -> dict:
        """uint8 RGB [B, S, S, 3], content mask [B, S, S] -> `encode`'s features. The pixels are
        normalised as SAM2Transforms does (pixel_norm "sam"), the padding zero after it."""
        from resam_jax.models.sam.sam import normalize_pixels as normalize_content

        return self.encode(normalize_content(images, content_mask, self.pixel_norm))

    def decode_masks(self, embedding: dict, prompts) -> tuple[jax.Array, jax.Array]:
        """One mask per prompt, as training decodes (single mask, no dynamic fallback):
        prompts {"points" [B, N, P, 2], "point_labels" [B, N, P]} and / or {"boxes" [B, N, 4]}
        (as SAM2ImagePredictor: two corner points before the clicks), optionally "mask_inputs"
        [B, N, L, L] -> (logits [B, N, S, S] in the input frame, IoU [B, N])."""
        points, labels = prompts.get("points"), prompts.get("point_labels")
        boxes, masks = prompts.get("boxes"), prompts.get("mask_inputs")
        given = [p for p in (points, boxes, masks) if p is not None]
        if not given:
            raise ValueError("decode_masks needs points, boxes or mask_inputs")
        if (points is None) != (labels is None):
            raise ValueError("points and point_labels go together")
        b, n = given[0].shape[:2]

        def flat(x):
            return None if x is None else x.reshape(b * n, *x.shape[2:])

        sparse, dense = self.embed_prompts(flat(points), flat(labels), flat(boxes), flat(masks))
        features = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), embedding)
        low_res, iou, _, _ = self.decode(features, sparse, dense, multimask_output=False)
        size = self.config.image_size
        logits = jax.image.resize(
            low_res[:, 0].astype(jnp.float32), (b * n, size, size), "bilinear", antialias=False
        )
        return logits.reshape(b, n, size, size), iou[:, 0].reshape(b, n)

    def features(self, embedding: dict) -> tuple[jax.Array, int]:
        """The stride-16 level (image_embed, [B, S/16, S/16, C]) and its stride."""
        return embedding["image_embed"], 16
