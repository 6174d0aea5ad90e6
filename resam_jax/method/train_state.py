"""The train state: one pytree holding everything a train step reads and writes.

The model is split with `nnx.split(model, resam_jax.models.LORA, ...)`: the LoRA parameters are
trained and live in the state; every other variable is frozen and passed to the step as a
separate pytree argument, so it is never in the optimiser and never copied by donation.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from resam_jax.method.optim import make_optimizer
from resam_jax.method.reinforce import FeatureQueues
from resam_jax.models import LORA

TRAIN_MODES = ("resam", "supervised")


OUTLIER_RULES = ("public", "accepted", "none")


@flax.struct.dataclass
class LossWindow:
    """The last `capacity` losses as a ring buffer, for the outlier rule (docs/method.md 4.5).

    Two rules decide which losses enter the window:
        "public"    the public code's LossWatcher(50, 4): every finite loss is appended BEFORE
                    the test, so the mean includes the current loss and the window moves on
                    after a rejection (a lasting rise is accepted once it fills the window).
        "accepted"  only accepted losses enter, the current one excluded from the mean; after
                    a lasting rise every later step can be rejected (lock-in).
        "none"      no ratio test and no window (the camera branch has no LossWatcher).
    Either way the ratio test starts once the window is full, and a non-finite loss is an
    outlier that never enters (also under "none", where the camera branch would apply it).
    """

    values: jax.Array  # float32 [W]
    next_slot: jax.Array  # int32 []
    size: jax.Array  # int32 [], number of filled slots (<= W)

    @classmethod
    def empty(cls, capacity: int) -> LossWindow:
        return cls(
            values=jnp.zeros((capacity,), jnp.float32), next_slot=jnp.int32(0), size=jnp.int32(0)
        )

    @property
    def capacity(self) -> int:
        return self.values.shape[0]

    def push(self, loss: jax.Array) -> LossWindow:
        return LossWindow(
            values=self.values.at[self.next_slot].set(loss.astype(jnp.float32)),
            next_slot=(self.next_slot + 1) % self.capacity,
            size=jnp.minimum(self.size + 1, self.capacity),
        )

    def _too_large(self, loss: jax.Array, factor: float) -> jax.Array:
        return (self.size == self.capacity) & (loss > factor * jnp.mean(self.values))

    def check(self, loss: jax.Array, factor: float, rule: str) -> tuple[jax.Array, LossWindow]:
        """(is_outlier, window): `window` is the window after this loss under `rule`, to keep
        if the step is accepted ("accepted") or whenever the loss was observed ("public")."""
        finite = jnp.isfinite(loss)
        if rule == "public":
            observed = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old), self.push(loss), self
            )
            return ~finite | observed._too_large(loss, factor), observed
        if rule == "accepted":
            return ~finite | self._too_large(loss, factor), self.push(loss)
        if rule == "none":
            return ~finite, self
        raise ValueError(f"unknown outlier rule {rule!r}; expected one of {OUTLIER_RULES}")


@flax.struct.dataclass
class TrainState:
    """Everything a train step updates. `teacher_lora` and `ssa_queues` are None outside
    mode "resam" (supervised training has neither a teacher nor SSA)."""

    step: jax.Array  # int32 [], train-step calls so far, skipped ones included
    lora: nnx.State  # student LoRA parameters (the trainable set)
    opt_state: optax.OptState
    teacher_lora: nnx.State | None  # EMA of `lora`; equal to it when ema_rate is 0
    ssa_queues: FeatureQueues | None
    loss_window: LossWindow


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, LoRA parameters, frozen variables) of a backbone."""
    graphdef, lora, frozen = nnx.split(model, LORA, ...)
    return graphdef, lora, frozen


def ema_update(teacher: Any, student: Any, ema_rate: float) -> Any:
    """teacher <- ema_rate * teacher + (1 - ema_rate) * student; ema_rate 0 copies the student."""
    if ema_rate == 0.0:
        return student
    return optax.incremental_update(student, teacher, step_size=1.0 - ema_rate)


def create_train_state(
    lora: nnx.State, feature_dim: int, config: ml_collections.ConfigDict
) -> TrainState:
    """The state at step 0 for config.method.mode in TRAIN_MODES.

    Args:
        lora: the LoRA parameters from split_model (B is zero, so the model equals SAM).
        feature_dim: channels of the image embedding (SamConfig.prompt_embed_dim).
        config: the full config (method and optim sections).
    """
    method = config.method
    if method.mode not in TRAIN_MODES:
        raise ValueError(
            f"method.mode={method.mode!r} does not train; expected one of {TRAIN_MODES}"
        )
    if not jax.tree.leaves(lora):
        raise ValueError(
            "the model has no LoRA parameters to train; set SamConfig.lora_start_layer"
        )
    resam = method.mode == "resam"
    return TrainState(
        step=jnp.int32(0),
        lora=lora,
        opt_state=make_optimizer(config.optim).init(lora),
        teacher_lora=jax.tree.map(jnp.copy, lora) if resam else None,
        ssa_queues=FeatureQueues.empty(method.ssa_queue_size, feature_dim) if resam else None,
        loss_window=LossWindow.empty(method.outlier_window),
    )
