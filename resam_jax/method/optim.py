"""Optimiser of the LoRA parameters: torch-style Adam with coupled weight decay and the
warmup + two-milestone learning-rate schedule of the public code (docs/method.md section 4.6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax


def learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """lr * factor(count), the public code's LambdaLR.

    factor is count / warmup_steps during the warmup (so the very first update uses lr 0, as
    torch's LambdaLR does), then decay ** (number of milestones reached).

    Args:
        config: the `optim` section: lr, warmup_steps, milestones, decay.
    """
    lr = config.lr
    warmup_steps = config.warmup_steps
    milestones = jnp.asarray(config.milestones, jnp.int32)
    decay = config.decay

    def schedule(count):
        after_warmup = decay ** jnp.sum(count >= milestones)
        if warmup_steps == 0:
            return lr * after_warmup
        return lr * jnp.where(count < warmup_steps, count / warmup_steps, after_warmup)

    return schedule


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """torch.optim.Adam(lr, weight_decay) semantics: the decay is added to the gradient before
    the Adam moments (coupled, unlike AdamW), betas (0.9, 0.999), eps 1e-8 outside the sqrt.

    Args:
        config: the `optim` section: lr, weight_decay, warmup_steps, milestones, decay.
    """
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
        optax.scale_by_learning_rate(learning_rate_schedule(config)),
    )


def updates_applied(opt_state: optax.OptState) -> jax.Array:
    """Number of optimiser updates applied so far (the schedule's step count)."""
    return optax.tree_utils.tree_get(
        opt_state,
        "count",
        filtering=lambda path, _: path[-1].tuple_name == "ScaleByScheduleState",
    )
