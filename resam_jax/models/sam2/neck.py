"""SAM 2's FPN neck (backbones/image_encoder.py FpnNeck with scalp=1): 1x1 lateral convs to
d_model, a nearest 2x top-down path into the stride-16 level only, the stride-32 level dropped."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from resam_jax.models.sam2.config import Sam2Config
from resam_jax.models.sam2.layers import conv1x1, upsample_nearest2x

# Levels (0 = stride 4) that receive the top-down path; levels 0 and 1 are lateral only.
TOP_DOWN_LEVELS = (2, 3)
# FpnNeck(scalp=1) discards the lowest-resolution output; stage 4 still feeds level 2.
SCALP = 1


class FpnNeck(nnx.Module):
    """Trunk stages [C @ S/4, ..., 8C @ S/32] -> [L0 @ S/4, L1 @ S/8, L2 @ S/16], d_model wide.

    Meta's `convs` run deepest first: convs[0] is stage 4's, convs[3] stage 1's.
    """

    def __init__(self, config: Sam2Config, *, rngs: nnx.Rngs):
        dtype = config.compute_dtype
        self.convs = nnx.List(
            [conv1x1(dim, config.d_model, dtype=dtype, rngs=rngs) for dim in config.channel_list]
        )

    def __call__(self, stages: list[jax.Array]) -> list[jax.Array]:
        n = len(self.convs) - 1
        levels = [None] * len(self.convs)
        previous = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](stages[i])
            if i in TOP_DOWN_LEVELS and previous is not None:
                # torch upsamples in float32 and adds in the promoted dtype
                previous = lateral + upsample_nearest2x(previous.astype(jnp.float32))
            else:
                previous = lateral
            levels[i] = previous
        return levels[: len(levels) - SCALP]
