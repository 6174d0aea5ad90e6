"""The train step's parts on their own (resam_jax.method.train_step): student_losses ignores
invalid instance slots, apply_or_skip keeps the state of a rejected step and advances `step`."""

import jax
import jax.numpy as jnp
import numpy as np
from test_train_step import make_batch, make_config, make_model

from resam_jax.method.optim import make_optimizer
from resam_jax.method.train_state import create_train_state, split_model
from resam_jax.method.train_step import apply_or_skip, student_losses


def test_student_losses_ignore_invalid_slots():
    graphdef, lora, frozen = split_model(make_model())
    config = make_config()
    batch = jax.tree.map(jnp.asarray, make_batch(0))
    valid = batch["instance_valid"]
    instances = {"points": batch["points"], "point_labels": batch["point_labels"]}

    def parts_for(targets):
        _, parts = student_losses(
            graphdef, frozen, lora, config.method, batch["weak_image"], batch["content_mask"],
            dict(instances, targets=targets), valid,
        )  # fmt: skip
        return parts

    parts = parts_for(batch["masks"])
    assert not bool(valid[0, -1])  # the last slot is padding
    flipped = batch["masks"].at[:, -1].set(~batch["masks"][:, -1])
    for name, value in parts_for(flipped).items():
        np.testing.assert_allclose(value, parts[name], rtol=1e-6, err_msg=name)
    changed = batch["masks"].at[:, 0].set(~batch["masks"][:, 0])
    assert float(parts_for(changed)["dice"]) != float(parts["dice"])  # a valid slot counts


def test_apply_or_skip_keeps_a_rejected_step():
    model = make_model()
    _, lora, _ = split_model(model)
    config = make_config()
    state = create_train_state(lora, model.feature_dim, config)
    grads = jax.tree.map(jnp.ones_like, state.lora)
    optimizer = make_optimizer(config.optim)

    def step(loss, num_valid):
        return apply_or_skip(
            state, grads, state.ssa_queues, jnp.float32(loss), jnp.int32(num_valid), optimizer,
            config.method,
        )  # fmt: skip

    for loss, num_valid in ((np.nan, 4), (1.0, 0)):
        new_state, _, skipped = step(loss, num_valid)
        assert bool(skipped) and int(new_state.step) == int(state.step) + 1
        for old, new in zip(jax.tree.leaves(state.lora), jax.tree.leaves(new_state.lora), strict=True):  # fmt: skip
            np.testing.assert_array_equal(old, new)
    new_state, _, skipped = step(1.0, 4)
    assert not bool(skipped)
    assert any(
        not np.array_equal(old, new)
        for old, new in zip(
            jax.tree.leaves(state.lora), jax.tree.leaves(new_state.lora), strict=True
        )
    )
