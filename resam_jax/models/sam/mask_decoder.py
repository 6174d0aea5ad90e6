"""SAM's mask decoder: a two-way transformer between prompt tokens and image embedding."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from resam_jax.models.sam.architecture import SamConfig
from resam_jax.models.sam.layers import MLP, MLPBlock, gelu, layer_norm

# The two-way transformer uses torch's default LayerNorm epsilon, unlike the encoder.
TRANSFORMER_LN_EPS = 1e-5


class Attention(nnx.Module):
    """Multi-head attention with an optional down-projection of q, k and v."""

    def __init__(
        self, dim: int, num_heads: int, downsample_rate: int = 1, *, dtype, rngs: nnx.Rngs
    ):
        internal = dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the attention width {internal}")
        self.num_heads = num_heads
        self.q_proj = nnx.Linear(dim, internal, dtype=dtype, rngs=rngs)
        self.k_proj = nnx.Linear(dim, internal, dtype=dtype, rngs=rngs)
        self.v_proj = nnx.Linear(dim, internal, dtype=dtype, rngs=rngs)
        self.out_proj = nnx.Linear(internal, dim, dtype=dtype, rngs=rngs)

    def _heads(self, x: jax.Array) -> jax.Array:
        return x.reshape(*x.shape[:-1], self.num_heads, -1)  # [n, tokens, heads, d]

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        q, k, v = (
            self._heads(self.q_proj(q)),
            self._heads(self.k_proj(k)),
            self._heads(self.v_proj(v)),
        )
        logits = jnp.einsum("nqhd,nkhd->nhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("nhqk,nkhd->nqhd", weights, v)
        return self.out_proj(out.reshape(*out.shape[:-2], -1))


def transformer_mlp(dim: int, mlp_dim: int, *, dtype, rngs: nnx.Rngs) -> nnx.Module:
    """SAM's token MLP in the two-way transformer (lin1, ReLU, lin2)."""
    return MLPBlock(dim, mlp_dim, jax.nn.relu, dtype=dtype, rngs=rngs)


class TwoWayAttentionBlock(nnx.Module):
    """Self-attention of tokens, then cross-attention both ways, with an MLP on the tokens.

    SAM 2's transformer is the same (sam2/modeling/sam/transformer.py) but for its attention's
    arithmetic (F.scaled_dot_product_attention) and its MLP's parameter names: it passes its own
    `attention` class and `mlp` constructor (resam_jax.models.sam2.mask_decoder)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_dim: int,
        skip_first_layer_pe: bool,
        *,
        dtype,
        rngs: nnx.Rngs,
        attention: type[nnx.Module] = Attention,
        mlp: Callable[..., nnx.Module] = transformer_mlp,
    ):
        self.skip_first_layer_pe = skip_first_layer_pe
        self.self_attn = attention(dim, num_heads, dtype=dtype, rngs=rngs)
        self.norm1 = layer_norm(dim, TRANSFORMER_LN_EPS, dtype, rngs)
        self.cross_attn_token_to_image = attention(dim, num_heads, 2, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(dim, TRANSFORMER_LN_EPS, dtype, rngs)
        self.mlp = mlp(dim, mlp_dim, dtype=dtype, rngs=rngs)
        self.norm3 = layer_norm(dim, TRANSFORMER_LN_EPS, dtype, rngs)
        self.norm4 = layer_norm(dim, TRANSFORMER_LN_EPS, dtype, rngs)
        self.cross_attn_image_to_token = attention(dim, num_heads, 2, dtype=dtype, rngs=rngs)

    def __call__(self, queries, keys, query_pe, key_pe):
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nnx.Module):
    """`depth` TwoWayAttentionBlocks, then a last token-to-image attention; `attention` and
    `mlp` as there."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        mlp_dim: int,
        *,
        dtype,
        rngs: nnx.Rngs,
        attention: type[nnx.Module] = Attention,
        mlp: Callable[..., nnx.Module] = transformer_mlp,
    ):
        parts = dict(dtype=dtype, rngs=rngs, attention=attention, mlp=mlp)
        self.layers = nnx.List(
            [TwoWayAttentionBlock(dim, num_heads, mlp_dim, i == 0, **parts) for i in range(depth)]
        )
        self.final_attn_token_to_image = attention(dim, num_heads, 2, dtype=dtype, rngs=rngs)
        self.norm_final_attn = layer_norm(dim, TRANSFORMER_LN_EPS, dtype, rngs)

    def __call__(self, image_embedding, image_pe, point_embedding):
        """image_embedding/image_pe [n, HW, C], point_embedding [n, T, C] -> (tokens, image)."""
        queries, keys = point_embedding, image_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, image_pe)
        q, k = queries + point_embedding, keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


class ConvTranspose2x2(nnx.Module):
    """torch ConvTranspose2d(kernel_size=2, stride=2): each input cell paints a 2x2 block.

    With stride equal to kernel there is no overlap, so the layer is one einsum
    and a reshape; the kernel is [2, 2, in, out] (row, column, in, out), a
    layout pinned by the conversion parity test.
    """

    def __init__(self, in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs):
        init = jax.nn.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (2, 2, in_features, out_features)))
        self.bias = nnx.Param(jnp.zeros((out_features,)))
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, _ = x.shape
        kernel = self.kernel[...].astype(self.dtype)
        y = jnp.einsum("nhwc,ijco->nhiwjo", x.astype(self.dtype), kernel)
        return y.reshape(n, 2 * h, 2 * w, -1) + self.bias[...].astype(self.dtype)


class MaskDecoder(nnx.Module):
    """Prompt tokens + image embedding -> mask logits [n, 4, 4E, 4E] and IoU predictions [n, 4]."""

    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        dim, dtype = config.prompt_embed_dim, config.compute_dtype
        self.num_multimask_outputs = config.num_multimask_outputs
        num_mask_tokens = config.num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(
            dim,
            config.decoder_depth,
            config.decoder_num_heads,
            config.decoder_mlp_dim,
            dtype=dtype,
            rngs=rngs,
        )
        embed_init = jax.nn.initializers.normal(1.0)
        self.iou_token = nnx.Param(embed_init(rngs.params(), (1, dim)))
        self.mask_tokens = nnx.Param(embed_init(rngs.params(), (num_mask_tokens, dim)))
        self.upscale_conv1 = ConvTranspose2x2(dim, dim // 4, dtype=dtype, rngs=rngs)
        self.upscale_norm = layer_norm(dim // 4, 1e-6, dtype, rngs)
        self.upscale_conv2 = ConvTranspose2x2(dim // 4, dim // 8, dtype=dtype, rngs=rngs)
        self.output_hypernetworks_mlps = nnx.List(
            [MLP(dim, dim, dim // 8, 3, dtype=dtype, rngs=rngs) for _ in range(num_mask_tokens)]
        )
        self.iou_prediction_head = MLP(
            dim,
            config.iou_head_hidden_dim,
            num_mask_tokens,
            config.iou_head_depth,
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_embeddings: jax.Array,
        dense_embeddings: jax.Array,
        multimask_output: bool,
    ) -> tuple[jax.Array, jax.Array]:
        """image_embeddings [n, E, E, C] (one per prompt), image_pe [E, E, C],
        sparse [n, T, C], dense [n, E, E, C]."""
        n, e, _, c = image_embeddings.shape
        output_tokens = jnp.concatenate([self.iou_token[...], self.mask_tokens[...]], axis=0)
        output_tokens = jnp.broadcast_to(output_tokens, (n, *output_tokens.shape))
        tokens = jnp.concatenate(
            [output_tokens, sparse_embeddings.astype(output_tokens.dtype)], axis=1
        )
        src = (image_embeddings + dense_embeddings).reshape(n, e * e, c)
        pos = jnp.broadcast_to(image_pe.reshape(1, e * e, c), src.shape)

        hs, src = self.transformer(src, pos, tokens)
        iou_token_out = hs[:, 0]
        mask_tokens_out = hs[:, 1 : 1 + len(self.output_hypernetworks_mlps)]

        x = src.reshape(n, e, e, c)
        x = gelu(self.upscale_norm(self.upscale_conv1(x)))
        upscaled = gelu(self.upscale_conv2(x))  # [n, 4E, 4E, C/8]
        hyper_in = jnp.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            axis=1,
        )
        masks = jnp.einsum("nmc,nhwc->nmhw", hyper_in, upscaled)
        iou_pred = self.iou_prediction_head(iou_token_out)

        selected = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, selected].astype(jnp.float32), iou_pred[:, selected].astype(jnp.float32)
