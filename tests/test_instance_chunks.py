"""Instance chunks (train.instance_chunk_size): the decoder runs on k instance slots at a time,
each chunk recomputed in the backward pass (resam_jax/method/instances.py in_instance_chunks).

The step must be the same computation whatever the chunk size: equal losses, gradients,
pseudo-labels, teacher and queues (to float32 rounding), with N not a multiple of k (padded
slots) and with k = 1. And it must hold less: the compiled step's temporaries shrink with the
chunk at 50 instance slots. A chunking that mixed up slots (a reshape that interleaves chunks,
padding results kept), lost the gradient of a chunk, or kept every chunk's activations (no
recomputation) fails here.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_batch_scaling import crowded_batch
from test_grad_accumulation import assert_close_trees, assert_same_step_metrics, one_update
from test_train_step import make_batch, make_config, make_model, train_step_of

from resam_jax.method.instances import in_instance_chunks
from resam_jax.method.train_state import create_train_state, split_model

METRICS = (
    "loss", "focal", "dice", "iou", "ssa", "grad_norm", "valid_instances", "teacher_point_iou",
    "refined_iou", "target_iou",
)  # fmt: skip


@pytest.mark.parametrize("chunk", [0, 1, 2, 3, 5, 9])
def test_chunks_return_every_instance_in_its_slot(chunk):
    rng = np.random.default_rng(0)
    instances = {
        "x": jnp.asarray(rng.normal(size=(2, 5, 4, 3)), jnp.float32),
        "y": jnp.asarray(rng.normal(size=(2, 5)), jnp.float32),
    }

    def fn(chunk_instances):  # per instance: a scalar and a [4] vector
        x, y = chunk_instances["x"], chunk_instances["y"]
        return {"scalar": x.sum((-1, -2)) * y, "vector": x.max(-1) + y[..., None]}

    expected = fn(instances)
    actual = in_instance_chunks(fn, instances, chunk)
    for name in expected:
        assert actual[name].shape == expected[name].shape
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-6)


@pytest.mark.parametrize("mode", ["resam", "supervised"])
def test_step_is_the_same_whatever_the_chunk(mode):
    # 3 slots (2 instances + padding) per image: chunks of 2 pad a fourth slot; chunks of 1
    # run every slot alone. ssa_queue_size 4 fills during the step, so SSA carries a loss.
    batch = make_batch(seed=3)
    whole, whole_metrics = one_update(mode, 1, batch, instance_chunk_size=0)
    assert not bool(whole_metrics["skipped"]) and int(whole_metrics["valid_instances"]) > 0
    for chunk in (2, 1):
        state, metrics = one_update(mode, 1, batch, instance_chunk_size=chunk)
        names = [name for name in METRICS if name in whole_metrics]
        assert_same_step_metrics(metrics, whole_metrics, names, context=f"chunk {chunk}")
        for field in ("opt_state", "lora", "teacher_lora", "ssa_queues", "loss_window"):
            assert_close_trees(getattr(state, field), getattr(whole, field))


def compiled_temp_bytes(chunk: int, batch) -> int:
    model = make_model()
    graphdef, lora, frozen = split_model(model)
    config = make_config(mode="resam")
    config.train.instance_chunk_size = chunk
    state = jax.eval_shape(
        lambda lora: create_train_state(lora, model.config.prompt_embed_dim, config), lora
    )
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), batch)
    compiled = train_step_of(graphdef, config).lower(state, frozen, shapes).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_chunks_hold_less_memory_with_many_instances():
    batch = crowded_batch(given=(50,))  # one image, 50 instance slots
    whole = compiled_temp_bytes(0, batch)
    chunked = compiled_temp_bytes(8, batch)
    # Measured: about 0.4x (the decoder's per-instance activations dominate at 50 slots).
    assert chunked < 0.7 * whole, (chunked, whole)
