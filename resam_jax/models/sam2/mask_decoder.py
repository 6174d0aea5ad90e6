"""SAM 2's mask decoder (modeling/sam/mask_decoder.py, transformer.py): SAM's two-way transformer
(resam_jax.models.sam.mask_decoder's, given SAM 2's attention and token MLP) with an
object-score token, high-resolution skip features and a sigmoid IoU head; the upscaling
LayerNorm2d's epsilon is 1e-6."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from resam_jax.models.sam.mask_decoder import TwoWayTransformer
from resam_jax.models.sam2.config import Sam2Config
from resam_jax.models.sam2.layers import (
    MLP,
    ConvTranspose2x2,
    attention,
    conv1x1,
    gelu,
    layer_norm,
)


class Attention(nnx.Module):
    """Multi-head attention with q, k and v projected down by `downsample_rate`."""

    def __init__(
        self, dim: int, num_heads: int, downsample_rate: int = 1, *, dtype, rngs: nnx.Rngs
    ):
        internal = dim // downsample_rate
        self.num_heads = num_heads
        self.q_proj = nnx.Linear(dim, internal, dtype=dtype, rngs=rngs)
        self.k_proj = nnx.Linear(dim, internal, dtype=dtype, rngs=rngs)
        self.v_proj = nnx.Linear(dim, internal, dtype=dtype, rngs=rngs)
        self.out_proj = nnx.Linear(internal, dim, dtype=dtype, rngs=rngs)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        heads = lambda x: x.reshape(*x.shape[:-1], self.num_heads, -1)  # noqa: E731
        out = attention(heads(self.q_proj(q)), heads(self.k_proj(k)), heads(self.v_proj(v)))
        return self.out_proj(out.reshape(*out.shape[:-2], -1))


def transformer_mlp(dim: int, mlp_dim: int, *, dtype, rngs: nnx.Rngs) -> MLP:
    """SAM 2's token MLP in the two-way transformer (sam2_utils.MLP: layers 0 and 1, ReLU)."""
    return MLP(dim, mlp_dim, dim, 2, dtype=dtype, rngs=rngs)


class MaskDecoder(nnx.Module):
    """Prompt tokens + image embedding (+ high-res features) -> mask logits [n, m, 4E, 4E],
    IoU predictions [n, m] (sigmoid), the single-mask output token [n, 1, C] and
    object-score logits [n, 1]."""

    def __init__(self, config: Sam2Config, *, rngs: nnx.Rngs):
        dim, dtype = config.d_model, config.compute_dtype
        self.num_mask_tokens = config.num_multimask_outputs + 1
        self.stability_delta = config.stability_delta
        self.stability_thresh = config.stability_thresh
        self.transformer = TwoWayTransformer(
            dim, config.decoder_depth, config.decoder_num_heads, config.decoder_mlp_dim,
            dtype=dtype, rngs=rngs, attention=Attention, mlp=transformer_mlp,
        )  # fmt: skip
        embed_init = jax.nn.initializers.normal(1.0)
        self.obj_score_token = nnx.Param(embed_init(rngs.params(), (1, dim)))
        self.iou_token = nnx.Param(embed_init(rngs.params(), (1, dim)))
        self.mask_tokens = nnx.Param(embed_init(rngs.params(), (self.num_mask_tokens, dim)))
        self.upscale_conv1 = ConvTranspose2x2(dim, dim // 4, dtype=dtype, rngs=rngs)
        self.upscale_norm = layer_norm(dim // 4, 1e-6, dtype, rngs)
        self.upscale_conv2 = ConvTranspose2x2(dim // 4, dim // 8, dtype=dtype, rngs=rngs)
        # Applied to the neck's stride-4 and stride-8 levels once per image (forward_image).
        self.conv_s0 = conv1x1(dim, dim // 8, dtype=dtype, rngs=rngs)
        self.conv_s1 = conv1x1(dim, dim // 4, dtype=dtype, rngs=rngs)
        self.output_hypernetworks_mlps = nnx.List(
            [
                MLP(dim, dim, dim // 8, 3, dtype=dtype, rngs=rngs)
                for _ in range(self.num_mask_tokens)
            ]
        )
        self.iou_prediction_head = MLP(
            dim,
            config.iou_head_hidden_dim,
            self.num_mask_tokens,
            config.iou_head_depth,
            sigmoid_output=True,
            dtype=dtype,
            rngs=rngs,
        )
        self.pred_obj_score_head = MLP(dim, dim, 1, 3, dtype=dtype, rngs=rngs)

    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_embeddings: jax.Array,
        dense_embeddings: jax.Array,
        high_res_features: tuple[jax.Array, jax.Array],
        *,
        multimask_output: bool,
        repeat_image: bool,
        dynamic_multimask: bool = False,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """image_embeddings [B, E, E, C] (B = 1 with `repeat_image`, else one per prompt set),
        image_pe [E, E, C], sparse [n, T, C], dense [n, E, E, C], high_res_features
        (s0 [B|1, 4E, 4E, C/8], s1 [B|1, 2E, 2E, C/4]).

        `dynamic_multimask` is MaskDecoder.dynamic_multimask_via_stability in eval mode: a
        single-mask output whose stability is below the threshold is replaced by the best-IoU
        multimask output (build_sam2's default for inference; training runs without it).

        The returned mask tokens (SAM 2's object-pointer input) are the three multimask tokens
        with `multimask_output`, else the single-mask token, as the released configurations
        set use_multimask_token_for_obj_ptr.
        """
        n = sparse_embeddings.shape[0]
        output_tokens = jnp.concatenate(
            [self.obj_score_token[...], self.iou_token[...], self.mask_tokens[...]], axis=0
        )
        output_tokens = jnp.broadcast_to(output_tokens, (n, *output_tokens.shape))
        tokens = jnp.concatenate([output_tokens, sparse_embeddings.astype(output_tokens.dtype)], 1)
        src = jnp.repeat(image_embeddings, n, axis=0) if repeat_image else image_embeddings
        src = src + dense_embeddings
        _, e, _, c = src.shape
        src = src.reshape(n, e * e, c)
        pos = jnp.broadcast_to(image_pe.reshape(1, e * e, c), src.shape)

        hs, src = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 1]
        mask_tokens_out = hs[:, 2 : 2 + self.num_mask_tokens]

        feat_s0, feat_s1 = high_res_features
        x = self.upscale_conv1(src.reshape(n, e, e, c)) + feat_s1
        x = gelu(self.upscale_norm(x))
        upscaled = gelu(self.upscale_conv2(x) + feat_s0)  # [n, 4E, 4E, C/8]
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            axis=1,
        )
        masks = jnp.einsum("nmc,nhwc->nmhw", hyper_in, upscaled).astype(jnp.float32)
        iou_pred = self.iou_prediction_head(iou_token_out).astype(jnp.float32)
        object_score_logits = self.pred_obj_score_head(hs[:, 0]).astype(jnp.float32)

        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif dynamic_multimask:
            masks, iou_pred = self._dynamic_multimask(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, :1], iou_pred[:, :1]
        tokens_out = mask_tokens_out[:, 1:] if multimask_output else mask_tokens_out[:, :1]
        return masks, iou_pred, tokens_out, object_score_logits

    def _stability(self, logits: jax.Array) -> jax.Array:
        """IoU of the mask at +delta and at -delta, [n, m]; 1 where both are empty."""
        inner = jnp.sum(logits > self.stability_delta, axis=(-2, -1)).astype(jnp.float32)
        outer = jnp.sum(logits > -self.stability_delta, axis=(-2, -1)).astype(jnp.float32)
        return jnp.where(outer > 0, inner / jnp.maximum(outer, 1.0), 1.0)

    def _dynamic_multimask(self, masks: jax.Array, iou: jax.Array) -> tuple[jax.Array, jax.Array]:
        best = jnp.argmax(iou[:, 1:], axis=-1)[:, None]  # [n, 1]
        best_masks = jnp.take_along_axis(masks[:, 1:], best[:, :, None, None], axis=1)
        best_iou = jnp.take_along_axis(iou[:, 1:], best, axis=1)
        stable = self._stability(masks[:, :1]) >= self.stability_thresh  # [n, 1]
        return (
            jnp.where(stable[:, :, None, None], masks[:, :1], best_masks),
            jnp.where(stable, iou[:, :1], best_iou),
        )
