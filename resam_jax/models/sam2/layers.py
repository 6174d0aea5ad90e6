"""Building blocks of the SAM 2 image model: norms, MLPs, attention, and torch-exact resampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Shared with SAM: exact GELU, torch's two-pass LayerNorm (on NHWC arrays also SAM 2's
# LayerNorm2d), the Buffer variable, sam2_utils.MLP and the 2x2 transposed convolution.
from resam_jax.models.sam.layers import MLP, Buffer, gelu, layer_norm  # noqa: F401
from resam_jax.models.sam.mask_decoder import ConvTranspose2x2  # noqa: F401


def conv1x1(in_features: int, out_features: int, *, dtype, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(in_features, out_features, (1, 1), dtype=dtype, rngs=rngs)


def max_pool2x2(x: jax.Array) -> jax.Array:
    """torch MaxPool2d(2, 2) on [B, H, W, C]: an odd last row or column is dropped."""
    b, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def upsample_nearest2x(x: jax.Array) -> jax.Array:
    """F.interpolate(scale_factor=2, mode="nearest") on [B, H, W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """torch's cubic convolution kernel (A = -0.75) at distances |t| < 2."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """[out_size, in_size] weights of torch F.interpolate(mode="bicubic", align_corners=False)
    along one axis: source positions (dst + 0.5) * in / out - 0.5 (not clamped), taps
    floor - 1 .. floor + 2 clamped to the border, no antialiasing. jax.image.resize("bicubic")
    uses the Keys kernel (a = -0.5) and renormalises at the edges: not the same function."""
    dst = np.arange(out_size, dtype=np.float64)
    src = (dst + 0.5) * (in_size / out_size) - 0.5
    base = np.floor(src)
    frac = src - base
    weights = np.zeros((out_size, in_size))
    for offset in (-1, 0, 1, 2):
        index = np.clip(base + offset, 0, in_size - 1).astype(np.int64)
        np.add.at(weights, (np.arange(out_size), index), _cubic(frac - offset))
    return weights.astype(np.float32)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, chunk_size: int | None = None):
    """softmax(q k^T / sqrt(d)) v over [B, L, heads, d] (F.scaled_dot_product_attention); scores
    and softmax in float32. With `chunk_size` (below the number of queries): chunked_attention."""
    b, lq, h, d = q.shape
    if chunk_size is not None and lq > chunk_size:
        return chunked_attention(q, k, v, chunk_size)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q * jnp.asarray(d**-0.5, q.dtype), k)
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


# Bytes of float32 scores one group of windows holds at a time in grouped_window_attention:
# about a core's L2 cache.
WINDOW_GROUP_BYTES = 1 << 20


def grouped_window_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """`attention` over many small windows [B, L, heads, d], a group of windows at a time
    (jax.lax.map, each group rematerialised): the largest divisor of B whose scores fit
    WINDOW_GROUP_BYTES (one window if none does), heads-major within the group, normalised after the product with v.
    Materialising all windows' scores at once (30 MB in one Hiera-b+ stage-3 block at 1024)
    makes XLA:CPU stream them through memory once per softmax pass; a group stays in cache. On
    two CPU cores b+'s stage-3 window attention (25 windows of 196 tokens, 8 heads) runs its
    forward in 42-54 ms instead of 131 (PyTorch's fused kernel: 38)."""
    b, lq, h, d = q.shape
    per_window = h * lq * k.shape[1] * 4
    fits = [g for g in range(2, b + 1) if b % g == 0 and g * per_window <= WINDOW_GROUP_BYTES]
    group = max(fits, default=1)

    def windows(args):
        wq, wk, wv = (t.transpose(0, 2, 1, 3) for t in args)  # [g, heads, L, d]
        scores = jnp.einsum(
            "bhqd,bhkd->bhqk", wq * jnp.asarray(d**-0.5, wq.dtype), wk,
            preferred_element_type=jnp.float32,
        )  # fmt: skip
        weights = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, -1, keepdims=True)))
        out = jnp.einsum(
            "bhqk,bhkd->bhqd", weights.astype(wv.dtype), wv, preferred_element_type=jnp.float32
        )
        out = out / jnp.sum(weights, axis=-1, keepdims=True)
        return out.astype(wv.dtype).transpose(0, 2, 1, 3)

    grouped = (t.reshape(b // group, group, *t.shape[1:]) for t in (q, k, v))
    out = jax.lax.map(jax.checkpoint(windows, prevent_cse=False), tuple(grouped))
    return out.reshape(b, lq, h, d)


def chunked_attention(q: jax.Array, k: jax.Array, v: jax.Array, chunk_size: int) -> jax.Array:
    """`attention` one head and one block of at most `chunk_size` queries at a time (jax.lax.map
    over heads, then over blocks): one [rows, keys] block of scores exists at a time (2 MB for
    128 queries of Hiera's 64 x 64 grid), in cache on a CPU. Each block is normalised after its
    product with v (exp(s - max) v / sum), the softmax's division on [rows, d] instead of
    [rows, keys]. On two CPU cores this runs Hiera-b+'s global attention (8 heads, 4096
    tokens) in half the time of all heads per block.

    The gradient is FlashAttention's (Dao, 2023, algorithm 2; `_blocked_attention_vjp`): the
    forward keeps each row's log-sum-exp, the backward recomputes one block's probabilities
    from it and takes five products per block, where differentiating the forward through
    jax.checkpoint recomputed the whole block and differentiated the row maxima too (b+'s
    global attention: 2.6 s against 3.0-3.4 s per forward and backward on two cores)."""
    b, lq, h, d = q.shape
    lk = k.shape[1]
    rows = max(r for r in range(1, chunk_size + 1) if lq % r == 0)

    def per_head(x: jax.Array, length: int) -> jax.Array:  # [b, L, h, d] -> [b h, L, d]
        return x.transpose(0, 2, 1, 3).reshape(b * h, length, d)

    scaled = per_head(q * jnp.asarray(d**-0.5, q.dtype), lq).reshape(b * h, lq // rows, rows, d)
    heads = (scaled, per_head(k, lk), per_head(v, lk))
    out = jax.lax.map(lambda args: _blocked_attention(*args), heads)
    return out.reshape(b, h, lq, d).transpose(0, 2, 1, 3)


def _attention_blocks(blocks: jax.Array, keys: jax.Array, values: jax.Array):
    """One head: query blocks [n, rows, d] (scaled), keys and values [lk, d] -> the output
    [n, rows, d] and each row's log-sum-exp of its scores [n, rows] (float32)."""

    def block(x):
        scores = jnp.dot(x, keys.T, preferred_element_type=jnp.float32)
        peak = jnp.max(scores, axis=-1, keepdims=True)
        weights = jnp.exp(scores - peak)
        total = jnp.sum(weights, axis=-1, keepdims=True)
        out = jnp.dot(weights.astype(values.dtype), values, preferred_element_type=jnp.float32)
        return (out / total).astype(values.dtype), (peak + jnp.log(total))[:, 0]

    return jax.lax.map(block, blocks)


@jax.custom_vjp
def _blocked_attention(blocks: jax.Array, keys: jax.Array, values: jax.Array) -> jax.Array:
    return _attention_blocks(blocks, keys, values)[0]


def _blocked_attention_fwd(blocks, keys, values):
    out, lse = _attention_blocks(blocks, keys, values)
    return out, (blocks, keys, values, out, lse)


def _blocked_attention_vjp(residuals, grad_out):
    """Per query block: P = exp(x K^T - lse), dV += P^T dO, dS = P (dO V^T - rowsum(dO O)),
    dx = dS K, dK += dS^T x; dK and dV accumulate in float32 over the blocks (a scan)."""
    blocks, keys, values, out, lse = residuals
    f32 = jnp.float32
    delta = jnp.sum(grad_out.astype(f32) * out.astype(f32), axis=-1)  # [n, rows]

    def block(carry, inputs):
        grad_keys, grad_values = carry
        x, grad_o, lse_rows, delta_rows = inputs
        scores = jnp.dot(x, keys.T, preferred_element_type=f32)
        probs = jnp.exp(scores - lse_rows[:, None])
        grad_values += jnp.dot(probs.T.astype(values.dtype), grad_o, preferred_element_type=f32)
        grad_probs = jnp.dot(grad_o, values.T, preferred_element_type=f32)
        grad_scores = probs * (grad_probs - delta_rows[:, None])
        grad_x = jnp.dot(grad_scores.astype(keys.dtype), keys, preferred_element_type=f32)
        grad_keys += jnp.dot(grad_scores.T.astype(x.dtype), x, preferred_element_type=f32)
        return (grad_keys, grad_values), grad_x.astype(x.dtype)

    zeros = jnp.zeros(keys.shape, f32)
    (grad_keys, grad_values), grad_blocks = jax.lax.scan(
        block, (zeros, zeros), (blocks, grad_out, lse, delta)
    )
    return grad_blocks, grad_keys.astype(keys.dtype), grad_values.astype(values.dtype)


_blocked_attention.defvjp(_blocked_attention_fwd, _blocked_attention_vjp)
