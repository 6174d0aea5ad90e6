"""Building blocks of SAM's encoder, prompt encoder and decoder; SAM 2's modules use them too
(resam_jax.models.sam2.layers)."""

from __future__ import annotations

import jax
from flax import nnx


def gelu(x):
    # torch.nn.GELU defaults to the exact erf form; flax's default is tanh.
    return jax.nn.gelu(x, approximate=False)


def layer_norm(num_features: int, eps: float, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, as torch computes it; the fast E[x^2]-E[x]^2 form
    # costs a few ulps of parity for nothing measurable on speed.
    return nnx.LayerNorm(num_features, epsilon=eps, dtype=dtype, use_fast_variance=False, rngs=rngs)


class Buffer(nnx.Variable):
    """A constant of the model that is stored in checkpoints but never trained."""


class MLP(nnx.Module):
    """`num_layers` Linear layers, `activation` (ReLU) between them, an optional sigmoid on the
    output: SAM's mask-decoder MLP, and SAM 2's (sam2_utils.MLP) with its options."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int,
        *,
        activation=jax.nn.relu,
        sigmoid_output: bool = False,
        dtype,
        rngs: nnx.Rngs,
    ):
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nnx.List(
            [nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(dims[:-1], dims[1:])]
        )
        self.activation = activation
        self.sigmoid_output = sigmoid_output

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return jax.nn.sigmoid(x) if self.sigmoid_output else x


class MLPBlock(nnx.Module):
    """Linear -> activation -> Linear (transformer feed-forward)."""

    def __init__(self, dim: int, mlp_dim: int, activation, *, dtype, rngs: nnx.Rngs):
        self.lin1 = nnx.Linear(dim, mlp_dim, dtype=dtype, rngs=rngs)
        self.lin2 = nnx.Linear(mlp_dim, dim, dtype=dtype, rngs=rngs)
        self.activation = activation

    def __call__(self, x):
        return self.lin2(self.activation(self.lin1(x)))


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of the last two axes, as torch F.interpolate(align_corners=False).

    Half-pixel centres and no antialiasing, so a down-scale uses two taps per
    axis exactly as torch does.
    """
    shape = x.shape[:-2] + (height, width)
    return jax.image.resize(x, shape, method="bilinear", antialias=False)
