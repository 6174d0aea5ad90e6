"""Optimiser, schedule, EMA and outlier window of the train state."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import torch

from resam_jax.method.optim import learning_rate_schedule, make_optimizer, updates_applied
from resam_jax.method.train_state import LossWindow, ema_update


def _optim_config(**overrides):
    config = ml_collections.ConfigDict(
        dict(lr=5e-2, weight_decay=1e-2, warmup_steps=3, milestones=(5, 8), decay=0.1)
    )
    config.update(overrides)
    return config


def _torch_lambda(config):
    def factor(step):
        if step < config.warmup_steps:
            return step / config.warmup_steps
        return config.decay ** sum(step >= m for m in config.milestones)

    return factor


def test_schedule_matches_the_public_lambda():
    config = _optim_config(warmup_steps=250, milestones=(2000, 4000), lr=5e-4)
    schedule = learning_rate_schedule(config)
    factor = _torch_lambda(config)
    for step in (0, 1, 125, 249, 250, 1999, 2000, 3999, 4000, 10_000):
        np.testing.assert_allclose(schedule(step), 5e-4 * factor(step), rtol=1e-6)


def test_adam_with_coupled_weight_decay_matches_torch():
    config = _optim_config()
    rng = np.random.default_rng(0)
    params = {
        "a": rng.normal(size=(3, 4)).astype(np.float32),
        "b": rng.normal(size=(5,)).astype(np.float32),
    }
    gradients = [
        {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
        for _ in range(10)
    ]

    torch_params = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    torch_optimizer = torch.optim.Adam(
        torch_params.values(), lr=config.lr, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(torch_optimizer, _torch_lambda(config))
    for gradient in gradients:
        for k, p in torch_params.items():
            p.grad = torch.from_numpy(gradient[k])
        torch_optimizer.step()
        scheduler.step()

    optimizer = make_optimizer(config)
    jax_params = jax.tree.map(jnp.asarray, params)
    opt_state = optimizer.init(jax_params)
    for gradient in gradients:
        updates, opt_state = optimizer.update(
            jax.tree.map(jnp.asarray, gradient), opt_state, jax_params
        )
        jax_params = optax.apply_updates(jax_params, updates)

    for k in params:
        np.testing.assert_allclose(
            jax_params[k], torch_params[k].detach().numpy(), rtol=2e-5, atol=1e-6
        )


def test_ema_rate_zero_copies_the_student_and_otherwise_mixes():
    teacher = {"w": jnp.asarray([1.0, 2.0])}
    student = {"w": jnp.asarray([3.0, 6.0])}
    assert ema_update(teacher, student, 0.0) is student
    np.testing.assert_allclose(ema_update(teacher, student, 0.75)["w"], [1.5, 3.0])


class PublicLossWatcher:
    """The rule of the public code's LossWatcher(window, factor), in plain Python: every finite
    loss is appended before the test, the test starts once `window` losses were seen, and the
    mean is over the last `window` of them, the current one included."""

    def __init__(self, window: int, factor: float):
        self.window, self.factor, self.losses = window, factor, []

    def is_outlier(self, loss: float) -> bool:
        if not np.isfinite(loss):
            return True
        self.losses.append(loss)
        if len(self.losses) < self.window:
            return False
        return loss > self.factor * np.mean(self.losses[-self.window :])


def _window_flags(losses, rule, capacity=4, factor=2.0):
    """Outlier flags of LossWindow.check over a loss sequence, keeping the window as a step
    does: the observed window for "public", the pushed one only when accepted for "accepted"."""
    window, flags = LossWindow.empty(capacity), []
    for loss in losses:
        outlier, observed = window.check(jnp.float32(loss), factor, rule)
        flags.append(bool(outlier))
        if rule == "public" or not outlier:
            window = observed
    return flags


# Small losses, a NaN, then a lasting rise to 10: the public rule accepts the new level once it
# fills the window; a rule over accepted losses only rejects every later step (lock-in).
LOSSES = [1.0, 1.2, 0.8, 1.0, float("nan"), 1.1, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]


def test_public_outlier_rule_matches_the_public_loss_watcher():
    watcher = PublicLossWatcher(window=4, factor=2.0)
    expected = [watcher.is_outlier(loss) for loss in LOSSES]
    assert _window_flags(LOSSES, "public") == expected
    assert expected[4] and expected[6] and not expected[-1]  # NaN, the jump; then accepted


def test_accepted_outlier_rule_locks_after_a_lasting_rise():
    flags = _window_flags(LOSSES, "accepted")
    assert flags[4] and all(flags[6:])  # every step after the rise is rejected
    assert flags != _window_flags(LOSSES, "public")


def test_loss_window_ratio_test_starts_once_full():
    window = LossWindow.empty(3)
    for rule in ("public", "accepted"):
        assert bool(window.check(jnp.float32(jnp.inf), 4.0, rule)[0])
        assert not bool(window.check(jnp.float32(1e6), 4.0, rule)[0])  # not full yet
    for loss in (1.0, 2.0, 3.0, 1.0):  # ring buffer keeps the last three: 2, 3, 1 (mean 2)
        window = window.push(jnp.float32(loss))
    assert not bool(window.check(jnp.float32(8.0), 4.0, "accepted")[0])
    assert bool(window.check(jnp.float32(8.01), 4.0, "accepted")[0])
    with pytest.raises(ValueError, match="outlier rule"):
        window.check(jnp.float32(1.0), 4.0, "median")


def test_updates_applied_reads_the_schedule_count():
    config = _optim_config()
    optimizer = make_optimizer(config)
    params = {"w": jnp.ones(2)}
    opt_state = optimizer.init(params)
    for _ in range(3):
        _, opt_state = optimizer.update({"w": jnp.ones(2)}, opt_state, params)
    assert int(updates_applied(opt_state)) == 3
