"""SAM's ViT image encoder: windowed attention with decomposed relative positions, and LoRA.

The attention has three formulations of one function (SamConfig.attention: `attend_rows` over
all queries, `chunked_attention` over blocks of query rows, `dot_product_attention`), and the
blocks with LoRA can be rematerialised (SamConfig.remat, `remat_block_call`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resam_jax.models.sam.architecture import SamConfig
from resam_jax.models.sam.layers import MLPBlock, gelu, layer_norm


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
        implementation: str = SamConfig.attention,
        chunk_size: int = SamConfig.attention_chunk_size,
        rngs: nnx.Rngs,
    ):
        self.implementation = implementation
        self.chunk_size = chunk_size
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
        qkv = qkv.reshape(b, h, w, 3, self.num_heads, self.head_dim)
        q, k, v = (qkv[:, :, :, i].transpose(0, 3, 1, 2, 4) for i in range(3))  # [b, n, h, w, d]
        index = relative_position_index(h, h)
        rel_h = self.rel_pos_h[...].astype(q.dtype)[index]  # [h, kh, d]
        rel_w = self.rel_pos_w[...].astype(q.dtype)[index]  # [w, kw, d]
        k, v = k.reshape(b, self.num_heads, h * w, -1), v.reshape(b, self.num_heads, h * w, -1)
        if self.implementation == "dot_product":
            out = dot_product_attention(q, k, v, rel_h, rel_w)
        elif self.implementation == "chunked":
            out = chunked_attention(q, k, v, rel_h, rel_w, self.chunk_size)
        else:
            out = attend_rows(q, k, v, rel_h, rel_w)
        out = out.reshape(b, self.num_heads, h, w, self.head_dim).transpose(0, 2, 3, 1, 4)
        return self.proj(out.reshape(b, h, w, c))


def relative_position_bias(q: jax.Array, rel_h: jax.Array, rel_w: jax.Array) -> jax.Array:
    """Decomposed relative-position bias (MViTv2) of queries q [b, n, r, w, d] (r grid rows):
    [b, n, r, w, kh, kw], from the unscaled q and the rows of the tables for these queries,
    rel_h [r, kh, d] and rel_w [w, kw, d]."""
    bias_h = jnp.einsum("bnrwd,rkd->bnrwk", q, rel_h)
    bias_w = jnp.einsum("bnrwd,wkd->bnrwk", q, rel_w)
    return bias_h[..., :, None] + bias_w[..., None, :]


def attend_rows(
    q: jax.Array, k: jax.Array, v: jax.Array, rel_h: jax.Array, rel_w: jax.Array
) -> jax.Array:
    """Attention of the queries of r grid rows, q [b, n, r, w, d], to all keys and values
    k, v [b, n, kh * kw, d], with the relative-position bias of those rows (rel_h [r, kh, d],
    rel_w [w, kw, d]). Returns [b, n, r * w, d]. Scores and softmax in float32."""
    b, n, r, w, d = q.shape
    kh, kw = rel_h.shape[1], rel_w.shape[1]
    scores = jnp.einsum("bnrwd,bnkd->bnrwk", q * d**-0.5, k).reshape(b, n, r, w, kh, kw)
    scores = scores + relative_position_bias(q, rel_h, rel_w)
    scores = scores.reshape(b, n, r * w, kh * kw).astype(jnp.float32)
    # Softmax with the division after the value product: it scales an
    # [r*w, d] result instead of the [r*w, kh*kw] matrix (4096^2 in global blocks).
    weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True)))
    out = jnp.einsum("bnqk,bnkd->bnqd", weights.astype(v.dtype), v)
    return out / weights.sum(axis=-1, keepdims=True).astype(out.dtype)


def chunk_rows(h: int, w: int, chunk_size: int) -> int:
    """Grid rows per query block: the largest divisor of h whose rows hold at most chunk_size
    queries (at least one row)."""
    return max(r for r in range(1, h + 1) if h % r == 0 and (r * w <= chunk_size or r == 1))


def chunked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    rel_h: jax.Array,
    rel_w: jax.Array,
    chunk_size: int,
) -> jax.Array:
    """`attend_rows` over blocks of whole query rows in turn (jax.lax.map): at most one block of
    scores [b, n, <= chunk_size, kh * kw] exists at a time. Each block is rematerialised, so the
    backward pass keeps only q, k, v and recomputes the block's scores (flash-style)."""
    b, n, h, w, d = q.shape
    rows = chunk_rows(h, w, chunk_size)
    if rows == h:
        return attend_rows(q, k, v, rel_h, rel_w)
    blocks = h // rows
    q_blocks = q.reshape(b, n, blocks, rows, w, d).transpose(2, 0, 1, 3, 4, 5)
    rel_h_blocks = rel_h.reshape(blocks, rows, *rel_h.shape[1:])
    attend = jax.checkpoint(lambda block: attend_rows(*block, rel_w), prevent_cse=False)
    out = jax.lax.map(lambda block: attend((block[0], k, v, block[1])), (q_blocks, rel_h_blocks))
    return out.transpose(1, 2, 0, 3, 4).reshape(b, n, h * w, d)


def dot_product_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, rel_h: jax.Array, rel_w: jax.Array
) -> jax.Array:
    """jax.nn.dot_product_attention with the relative-position bias as its `bias` (on GPU it
    dispatches to cuDNN's fused kernel; the bias is still a [n, hw, hw] array)."""
    b, n, h, w, d = q.shape
    bias = relative_position_bias(q, rel_h, rel_w).reshape(b, n, h * w, h * w)
    out = jax.nn.dot_product_attention(
        q.reshape(b, n, h * w, d).transpose(0, 2, 1, 3),
        k.transpose(0, 2, 1, 3),
        v.transpose(0, 2, 1, 3),
        bias=bias,
    )
    return out.transpose(0, 2, 1, 3)


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
        attention: str = SamConfig.attention,
        attention_chunk_size: int = SamConfig.attention_chunk_size,
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
            implementation=attention,
            chunk_size=attention_chunk_size,
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


def remat_block_call(remat: str):
    """block(x) under the rematerialisation option `remat` (SamConfig.remat)."""
    if remat == "none":
        return lambda block, x: block(x)
    policy = None if remat == "blocks" else getattr(jax.checkpoint_policies, remat)

    def call(block: Block, x: jax.Array) -> jax.Array:
        # jax.checkpoint of the split block: a block's call writes no state back.
        graphdef, state = nnx.split(block)
        apply = jax.checkpoint(lambda state, x: nnx.merge(graphdef, state)(x), policy=policy)
        return apply(state, x)

    return call


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
        # Only blocks with LoRA carry gradients; the frozen ones before them keep no residuals.
        self.remat_from = min(lora_blocks, default=config.encoder_depth)
        self.remat = config.remat
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
                    attention=config.attention,
                    attention_chunk_size=config.attention_chunk_size,
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
        rematerialised = remat_block_call(self.remat)
        for i, block in enumerate(self.blocks):
            x = rematerialised(block, x) if i >= self.remat_from else block(x)
        x = self.neck_norm1(self.neck_conv1(x))
        return self.neck_norm2(self.neck_conv2(x))
