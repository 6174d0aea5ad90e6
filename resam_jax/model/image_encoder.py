"""SAM's ViT image encoder: windowed attention with decomposed relative positions, and LoRA."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resam_jax.model.config import SamConfig
from resam_jax.model.layers import MLPBlock, gelu, layer_norm


def lora_a_init(key, shape, dtype=jnp.float32):
    """torch's kaiming_uniform_(a=sqrt(5)) on a Linear(in, r) weight: U(-1/sqrt(in), 1/sqrt(in))."""
    bound = 1.0 / math.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def relative_position_index(q_size: int, k_size: int) -> np.ndarray:
    """Index into a (2*max-1)-row table of relative positions, as SAM's get_rel_pos."""
    q_coords = np.arange(q_size)[:, None] * max(k_size / q_size, 1.0)
    k_coords = np.arange(k_size)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return relative.astype(np.int32)


class Attention(nnx.Module):
    """Multi-head self-attention over a 2-D token grid with decomposed relative position bias.

    With LoRA, the q and v thirds of the fused qkv projection get a low-rank
    update x @ A @ B (no scaling, B zero-initialised), as the public ReSAM code.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        grid_size: int,
        *,
        lora_rank: int | None,
        dtype,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.grid_size = grid_size
        self.qkv = nnx.Linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
        self.rel_pos_h = nnx.Param(jnp.zeros((2 * grid_size - 1, self.head_dim)))
        self.rel_pos_w = nnx.Param(jnp.zeros((2 * grid_size - 1, self.head_dim)))
        if lora_rank:
            lora = dict(a_initializer=lora_a_init, dtype=dtype, rngs=rngs)
            self.lora_q = nnx.LoRA(dim, lora_rank, dim, **lora)
            self.lora_v = nnx.LoRA(dim, lora_rank, dim, **lora)
        else:
            self.lora_q = self.lora_v = None

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        if h != self.grid_size or w != self.grid_size:
            raise ValueError(
                f"attention built for a {self.grid_size}x{self.grid_size} grid got {h}x{w}"
            )
        qkv = self.qkv(x)
        if self.lora_q is not None:
            zeros = jnp.zeros_like(x)
            qkv = qkv + jnp.concatenate([self.lora_q(x), zeros, self.lora_v(x)], axis=-1)
        qkv = qkv.reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # [b, heads, hw, d]

        attn = jnp.einsum("bnqd,bnkd->bnqk", q * self.head_dim**-0.5, k)
        # Decomposed relative position bias (MViTv2), computed from the unscaled q.
        index = relative_position_index(h, h)
        rel_h = self.rel_pos_h[...].astype(q.dtype)[index]  # [h, kh, d]
        rel_w = self.rel_pos_w[...].astype(q.dtype)[index]  # [w, kw, d]
        r_q = q.reshape(b, self.num_heads, h, w, self.head_dim)
        bias_h = jnp.einsum("bnhwd,hkd->bnhwk", r_q, rel_h)
        bias_w = jnp.einsum("bnhwd,wkd->bnhwk", r_q, rel_w)
        attn = attn.reshape(b, self.num_heads, h, w, h, w)
        attn = attn + bias_h[..., :, None] + bias_w[..., None, :]
        attn = attn.reshape(b, self.num_heads, h * w, h * w).astype(jnp.float32)
        # Softmax with the division after the value product: it scales an
        # [hw, d] result instead of the [hw, hw] matrix (4096^2 in global blocks).
        weights = jnp.exp(attn - jax.lax.stop_gradient(attn.max(axis=-1, keepdims=True)))
        out = jnp.einsum("bnqk,bnkd->bnqd", weights.astype(v.dtype), v)
        out = out / weights.sum(axis=-1, keepdims=True).astype(out.dtype)
        return self.proj(out.transpose(0, 2, 1, 3).reshape(b, h, w, c))


def window_partition(x: jax.Array, window: int) -> tuple[jax.Array, tuple[int, int]]:
    """[B, H, W, C] -> [B * nW, window, window, C], zero-padding H and W up to multiples."""
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = h + pad_h, w + pad_w
    x = x.reshape(b, hp // window, window, wp // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(
    windows: jax.Array, window: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> jax.Array:
    """Inverse of `window_partition`, dropping the padding."""
    hp, wp = padded_hw
    h, w = hw
    c = windows.shape[-1]
    x = windows.reshape(-1, hp // window, wp // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)[:, :h, :w]


class Block(nnx.Module):
    """Pre-norm transformer block; windowed attention unless `window_size` is 0."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        grid_size: int,
        *,
        lora_rank: int | None,
        dtype,
        rngs: nnx.Rngs,
    ):
        self.window_size = window_size
        self.norm1 = layer_norm(dim, 1e-6, dtype, rngs)
        self.attn = Attention(
            dim,
            num_heads,
            window_size or grid_size,
            lora_rank=lora_rank,
            dtype=dtype,
            rngs=rngs,
        )
        self.norm2 = layer_norm(dim, 1e-6, dtype, rngs)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), gelu, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        shortcut = x
        x = self.norm1(x)
        if self.window_size:
            hw = x.shape[1:3]
            x, padded_hw = window_partition(x, self.window_size)
            x = window_unpartition(self.attn(x), self.window_size, padded_hw, hw)
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nnx.Module):
    """Images [B, S, S, 3] (normalised) -> embeddings [B, S/16, S/16, prompt_embed_dim]."""

    def __init__(self, config: SamConfig, *, rngs: nnx.Rngs):
        dim, dtype = config.encoder_embed_dim, config.compute_dtype
        grid = config.embed_size
        self.patch_embed = nnx.Conv(
            3,
            dim,
            kernel_size=(config.patch_size, config.patch_size),
            strides=(config.patch_size, config.patch_size),
            padding="VALID",
            dtype=dtype,
            rngs=rngs,
        )
        self.pos_embed = nnx.Param(jnp.zeros((1, grid, grid, dim)))
        lora_blocks = set(config.lora_blocks())
        self.blocks = nnx.List(
            [
                Block(
                    dim,
                    config.encoder_num_heads,
                    config.mlp_ratio,
                    0 if i in config.encoder_global_attn_indexes else config.window_size,
                    grid,
                    lora_rank=config.lora_rank if i in lora_blocks else None,
                    dtype=dtype,
                    rngs=rngs,
                )
                for i in range(config.encoder_depth)
            ]
        )
        out = config.prompt_embed_dim
        self.neck_conv1 = nnx.Conv(dim, out, (1, 1), use_bias=False, dtype=dtype, rngs=rngs)
        self.neck_norm1 = layer_norm(out, 1e-6, dtype, rngs)
        self.neck_conv2 = nnx.Conv(
            out, out, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=dtype, rngs=rngs
        )
        self.neck_norm2 = layer_norm(out, 1e-6, dtype, rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.patch_embed(images) + self.pos_embed[...]
        for block in self.blocks:
            x = block(x)
        x = self.neck_norm1(self.neck_conv1(x))
        return self.neck_norm2(self.neck_conv2(x))
