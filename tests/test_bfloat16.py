"""bfloat16 mixed precision (model.dtype="bfloat16"): matmuls and convolutions in bfloat16;
LoRA and every other parameter, the optimiser state, the losses, the softmax, the LayerNorm
statistics and the encoder's residual stream (float32 positional embedding plus bfloat16 branch
outputs) in float32; training follows float32 training."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from test_train_step import IMAGE_SIZE, LOGIT_SCALE, make_batch, make_config, train_step_of

from resam_jax.method.train_state import create_train_state, split_model
from resam_jax.models.sam import Sam, sam_config

STEPS = 6


def make_model(dtype: str) -> Sam:
    """test_train_step.make_model in the given computation dtype (same weights)."""
    config = sam_config("tiny", image_size=IMAGE_SIZE, lora_start_layer=0, dtype=dtype)
    model = Sam(config, rngs=nnx.Rngs(0), pixel_norm="unit")  # make_config's pixel input
    head = model.mask_decoder.output_hypernetworks_mlps[0].layers[-1]
    head.kernel[...] = head.kernel[...] * LOGIT_SCALE
    head.bias[...] = head.bias[...] * LOGIT_SCALE
    return model


def loss_curve(dtype: str):
    """Losses of STEPS supervised steps, and the final state."""
    graphdef, lora, frozen = split_model(make_model(dtype))
    config = make_config(mode="supervised")
    state = create_train_state(lora, 32, config)
    step = train_step_of(graphdef, config)
    losses = []
    for i in range(STEPS):
        state, metrics = step(state, frozen, make_batch(i % 3))
        assert metrics["loss"].dtype == jnp.float32
        losses.append(float(metrics["loss"]))
    return np.array(losses), state


def test_bfloat16_computes_in_bfloat16_and_keeps_float32_state():
    model = make_model("bfloat16")
    grid = IMAGE_SIZE // 16
    tokens = jnp.ones((1, grid, grid, 32), jnp.float32)
    block = model.image_encoder.blocks[1]  # global attention
    assert block.attn(tokens).dtype == block.mlp(tokens).dtype == jnp.bfloat16
    assert block(tokens).dtype == jnp.float32  # the residual stream
    images = jnp.ones((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32)
    assert model.encode(images).dtype == jnp.float32
    assert {v.dtype for v in jax.tree.leaves(nnx.state(model))} == {jnp.dtype(jnp.float32)}


def test_bfloat16_training_follows_float32():
    """Supervised steps (GT targets: the teacher's thresholded pseudo-labels of a ReSAM step
    flip pixels at bfloat16 rounding, measured up to 10% apart in loss on this tiny model):
    the bfloat16 loss curve stays within 2% of the float32 one at every step (measured:
    at most 0.9%), and the LoRA and Adam state stay float32."""
    f32, _ = loss_curve("float32")
    bf16, state = loss_curve("bfloat16")
    np.testing.assert_allclose(bf16, f32, rtol=0.02)
    assert bf16[-1] < 0.5 * bf16[0]
    leaves = jax.tree.leaves((state.lora, state.opt_state))
    assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {
        jnp.dtype(jnp.float32)
    }
