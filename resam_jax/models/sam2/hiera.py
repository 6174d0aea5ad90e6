"""The Hiera trunk of SAM 2 (sam2/modeling/backbones/hieradet.py): a 4-stage hierarchy of
windowed and global attention blocks, q-pooling between stages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from resam_jax.models.sam.image_encoder import (
    lora_a_init,
    remat_block_call,
    window_partition,
    window_unpartition,
)
from resam_jax.models.sam2.config import LORA_TARGETS, BlockSpec, Sam2Config
from resam_jax.models.sam2.layers import (
    MLP,
    attention,
    bicubic_matrix,
    gelu,
    grouped_window_attention,
    layer_norm,
    max_pool2x2,
)

LN_EPS = 1e-6
# One block's attention (MultiScaleAttention.implementation): Sam2Config.attention's
# "reference" and "dot_product" as named there; its "chunked" is "chunked" in the global blocks
# (query blocks of attention_chunk_size) and "grouped" in the windowed ones.
BLOCK_ATTENTION = ("reference", "chunked", "grouped", "dot_product")


class MultiScaleAttention(nnx.Module):
    """Self-attention of a window (or the whole grid) from dim to dim_out channels; with
    `q_pool`, the queries are max-pooled 2x2 so the output grid is half the input's."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        q_pool: bool,
        *,
        implementation: str = "reference",
        chunk_size: int = 1024,
        dtype,
        rngs: nnx.Rngs,
        lora_rank: int | None = None,
        lora_targets: tuple[str, ...] = (),
    ):
        if implementation not in BLOCK_ATTENTION:
            raise ValueError(f"attention {implementation!r}; expected one of {BLOCK_ATTENTION}")
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.implementation = implementation
        self.chunk_size = chunk_size
        self.qkv = nnx.Linear(dim, 3 * dim_out, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(dim_out, dim_out, dtype=dtype, rngs=rngs)
        # LoRA per third of qkv, sized by the output width (q-pool blocks widen: dim_out = 2 dim).
        lora = dict(a_initializer=lora_a_init, dtype=dtype, rngs=rngs)
        for target in LORA_TARGETS:
            update = None
            if lora_rank and target in lora_targets:
                update = nnx.LoRA(dim, lora_rank, dim_out, **lora)
            setattr(self, f"lora_{target}", update)

    def qkv_projection(self, x: jax.Array) -> jax.Array:
        """x [..., dim] -> [..., 3 dim_out]: the fused projection plus the LoRA updates."""
        qkv = self.qkv(x)
        updates = [getattr(self, f"lora_{t}") for t in LORA_TARGETS]
        if all(u is None for u in updates):
            return qkv
        dim_out = qkv.shape[-1] // 3
        zeros = jnp.zeros((*x.shape[:-1], dim_out), qkv.dtype)
        return qkv + jnp.concatenate(
            [zeros if u is None else u(x).astype(qkv.dtype) for u in updates], axis=-1
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, _ = x.shape
        qkv = self.qkv_projection(x).reshape(b, h, w, 3, self.num_heads, -1)
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]  # [b, h, w, heads, d]
        if self.q_pool:
            q = max_pool2x2(q.reshape(b, h, w, -1))
            h, w = q.shape[1:3]
        q, k, v = (t.reshape(b, -1, self.num_heads, k.shape[-1]) for t in (q, k, v))
        if self.implementation == "dot_product":
            out = jax.nn.dot_product_attention(q, k, v)
        elif self.implementation == "grouped":
            out = grouped_window_attention(q, k, v)
        elif self.implementation == "chunked":
            out = attention(q, k, v, self.chunk_size)
        else:
            out = attention(q, k, v)
        return self.proj(out.reshape(b, h, w, -1))


class MultiScaleBlock(nnx.Module):
    """Pre-norm block. A widening block takes its residual from max_pool(proj(norm1(x)))."""

    def __init__(
        self,
        spec: BlockSpec,
        mlp_ratio: float,
        config: Sam2Config,
        *,
        rngs: nnx.Rngs,
        lora: bool = False,
    ):
        dtype = config.compute_dtype
        self.window_size = spec.window_size
        self.q_pool = spec.q_pool
        self.norm1 = layer_norm(spec.dim, LN_EPS, dtype, rngs)
        implementation = config.attention
        if implementation == "chunked" and spec.window_size:
            implementation = "grouped"
        self.attn = MultiScaleAttention(
            spec.dim,
            spec.dim_out,
            spec.num_heads,
            spec.q_pool,
            implementation=implementation,
            chunk_size=config.attention_chunk_size,
            dtype=dtype,
            rngs=rngs,
            lora_rank=config.lora_rank if lora else None,
            lora_targets=config.lora_targets,
        )
        self.norm2 = layer_norm(spec.dim_out, LN_EPS, dtype, rngs)
        hidden = int(spec.dim_out * mlp_ratio)
        self.mlp = MLP(
            spec.dim_out, hidden, spec.dim_out, 2, activation=gelu, dtype=dtype, rngs=rngs
        )
        widens = spec.dim != spec.dim_out
        self.proj = nnx.Linear(spec.dim, spec.dim_out, dtype=dtype, rngs=rngs) if widens else None

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        x = self.norm1(x)
        if self.proj is not None:
            shortcut = self.proj(x)
            if self.q_pool:
                shortcut = max_pool2x2(shortcut)
        window = self.window_size
        if window:
            x, padded_hw = window_partition(x, window)
        x = self.attn(x)
        if window:
            if self.q_pool:  # the windows were pooled too: unpartition at half the window
                window //= 2
                h, w = shortcut.shape[1:3]
                padded_hw = (h + -h % window, w + -w % window)
            x = window_unpartition(x, window, padded_hw, shortcut.shape[1:3])
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class Hiera(nnx.Module):
    """Images [B, S, S, 3] (normalised) -> the four stage outputs, NHWC:
    [C @ S/4, 2C @ S/8, 4C @ S/16, 8C @ S/32]."""

    def __init__(self, config: Sam2Config, *, rngs: nnx.Rngs):
        dtype, dim = config.compute_dtype, config.embed_dim
        self.patch_embed = nnx.Conv(
            3, dim, (7, 7), strides=4, padding=((3, 3), (3, 3)), dtype=dtype, rngs=rngs
        )
        # Meta's layout, [1, C, h, w]: the background is resized by bicubic matrices, the
        # window embedding tiled.
        self.pos_embed = nnx.Param(jnp.zeros((1, dim, *config.pos_embed_bkg_size)))
        window = config.window_spec[0]
        self.pos_embed_window = nnx.Param(jnp.zeros((1, dim, window, window)))
        lora_blocks = set(config.lora_blocks())
        self.blocks = nnx.List(
            [
                MultiScaleBlock(spec, config.mlp_ratio, config, rngs=rngs, lora=i in lora_blocks)
                for i, spec in enumerate(config.blocks())
            ]
        )
        self.stage_ends = config.stage_ends
        # Only blocks with LoRA carry gradients; the frozen ones before them keep no residuals.
        self.remat_from = min(lora_blocks, default=len(self.blocks))
        self.remat = config.remat
        self.dtype = dtype

    def position_embedding(self, h: int, w: int) -> jax.Array:
        """[h, w, C]: bicubic(pos_embed) (torch-exact, as matrices) + tiled pos_embed_window."""
        background = self.pos_embed[...][0]  # [C, bh, bw]
        rows = jnp.asarray(bicubic_matrix(background.shape[1], h))
        cols = jnp.asarray(bicubic_matrix(background.shape[2], w))
        pos = jnp.einsum("yi,cij,xj->yxc", rows, background, cols)
        window = jnp.transpose(self.pos_embed_window[...][0], (1, 2, 0))
        return pos + jnp.tile(window, (h // window.shape[0], w // window.shape[1], 1))

    def __call__(self, images: jax.Array) -> list[jax.Array]:
        x = self.patch_embed(images)
        x = x + self.position_embedding(*x.shape[1:3]).astype(x.dtype)
        outputs = []
        rematerialised = remat_block_call(self.remat)  # Sam2Config.remat: blocks or a policy
        for i, block in enumerate(self.blocks):
            x = rematerialised(block, x) if i >= self.remat_from else block(x)
            if i in self.stage_ends:
                outputs.append(x)
        return outputs
