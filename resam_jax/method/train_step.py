"""One ReSAM train step (docs/method.md section 4) as a pure function for the caller to jit:

    step = jax.jit(make_train_step(graphdef, config, steps_per_epoch), donate_argnums=0)
    state, metrics = step(state, frozen, batch)

train_step = micro_step per (micro-)batch (the teacher's pseudo-labels, student_losses, SSA)
+ apply_or_skip. Mode "resam" trains on the teacher's Requery masks, "supervised" on the GT
masks without teacher or SSA; "direct" does not train.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from resam_jax.method.instances import in_instance_chunks, split_micro_batches
from resam_jax.method.losses import instance_losses, masked_mean
from resam_jax.method.metrics import masked_mean_iou
from resam_jax.method.optim import learning_rate_schedule, make_optimizer, updates_applied
from resam_jax.method.pseudo_labels import teacher_pseudo_labels
from resam_jax.method.reinforce import FeatureQueues, reinforce, ssa_weight
from resam_jax.method.train_state import TRAIN_MODES, TrainState, ema_update
from resam_jax.models import Embedding

Batch = Mapping[str, jax.Array]
TrainStep = Callable[[TrainState, nnx.State, Batch], tuple[TrainState, dict[str, jax.Array]]]

# The loss terms whose weighted means over the micro-batches the step reports.
WEIGHTED_TERMS = ("loss", "focal", "bce", "dice", "iou", "ssa", "ssa_weight")


def student_losses(
    graphdef: nnx.GraphDef,
    frozen: nnx.State,
    lora: nnx.State,
    method: ml_collections.ConfigDict,
    image: jax.Array,
    content_mask: jax.Array,
    instances: Batch,
    valid: jax.Array,
    instance_chunk: int = 0,
) -> tuple[Embedding, dict[str, jax.Array]]:
    """The student's point-prompted masks scored against their targets: (its embedding of
    `image`, the mask term (method.mask_loss), dice and IoU terms as means over the `valid`
    instances [B, N]).

    `instances` holds {"points", "point_labels", "targets"} of every instance slot; the decode
    and losses run instance_chunk slots at a time (in_instance_chunks)."""
    student = nnx.merge(graphdef, lora, frozen)
    embedding = student.encode_pixels(image, content_mask)

    def decode_losses(chunk: Batch) -> Batch:
        student = nnx.merge(graphdef, lora, frozen)
        logits, iou_predictions = student.decode_masks(
            embedding, {"points": chunk["points"], "point_labels": chunk["point_labels"]}
        )
        return instance_losses(
            logits, iou_predictions, chunk["targets"], method.focal_alpha, method.focal_gamma,
            method.iou_target_on, method.mask_loss,
        )  # fmt: skip

    per_instance = in_instance_chunks(decode_losses, instances, instance_chunk)
    return embedding, {name: masked_mean(values, valid) for name, values in per_instance.items()}


def micro_step(
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
    state: TrainState,
    queues: FeatureQueues | None,
    frozen: nnx.State,
    batch: Batch,
) -> tuple[FeatureQueues | None, nnx.State, dict[str, jax.Array]]:
    """Loss and LoRA gradient of one (micro-)batch: (queues after it, gradient of
    weight * loss, its metrics with that weight: its valid instances when accumulating, else 1).

    Mode "resam": the teacher (EMA of the student's LoRA) encodes the weak view once, Refine and
    Requery both decode from that embedding (teacher_pseudo_labels); the student encodes the
    strong view and decodes with the original points; the loss is
        mask weight * mask term + dice_weight * dice + iou_weight * IoU-MSE + beta(epoch) * SSA
    over the instances that survive Requery (mask term: focal_weight * focal, or bce_weight *
    BCE, by method.mask_loss; SSA and beta by method.ssa_source and ssa_schedule). Mode
    "supervised": the GT masks on the weak view, the same losses, no teacher or SSA. The teacher's decodes and the student's decode-and-loss
    run train.instance_chunk_size instance slots at a time (instances.in_instance_chunks).
    """
    method = config.method
    resam = method.mode == "resam"
    instance_chunk = config.train.instance_chunk_size
    point_prompts = {"points": batch["points"], "point_labels": batch["point_labels"]}
    if resam:
        teacher = nnx.merge(graphdef, state.teacher_lora, frozen)
        pseudo = teacher_pseudo_labels(
            teacher, batch["weak_image"], batch["content_mask"], point_prompts,
            batch["instance_valid"], method.refine_threshold, instance_chunk,
            method.refine_entropy,
        )  # fmt: skip
        # Requery's box-prompted masks, or (the "Refine only" ablation) the refined masks.
        targets = pseudo.masks if method.requery else pseudo.refined
        valid = pseudo.valid
        student_image = batch["strong_image"]
    else:
        targets, valid = batch["masks"], batch["instance_valid"]
        student_image = batch["weak_image"]
    num_valid = jnp.sum(valid, dtype=jnp.int32)
    # Accumulated micro-batches count by their valid instances (module docstring).
    accumulate = config.train.grad_accum_steps > 1
    weight = num_valid.astype(jnp.float32) if accumulate else jnp.float32(1.0)

    def loss_fn(lora):
        embedding, parts = student_losses(
            graphdef, frozen, lora, method, student_image, batch["content_mask"],
            dict(point_prompts, targets=targets), valid, instance_chunk,
        )  # fmt: skip
        mask_weight = {"focal": method.focal_weight, "bce": method.bce_weight}[method.mask_loss]
        total = (
            mask_weight * parts[method.mask_loss]
            + method.dice_weight * parts["dice"]
            + method.iou_weight * parts["iou"]
        )
        new_queues = None
        if resam:
            student = nnx.merge(graphdef, lora, frozen)
            weak_features, stride = student.features(pseudo.weak_embedding)
            strong_features, _ = student.features(embedding)
            parts["ssa"], new_queues = reinforce(
                queues, weak_features, strong_features, pseudo.boxes, valid, stride,
                method.ssa_form, method.ssa_tau, method.ssa_source,
            )  # fmt: skip
            epoch = state.step // steps_per_epoch + 1
            parts["ssa_weight"] = ssa_weight(
                epoch, config.train.num_epochs, method.ssa_max_weight, method.ssa_schedule
            )
            total = total + parts["ssa_weight"] * parts["ssa"]
        return weight * total, (total, parts, new_queues)

    (_, (loss, parts, queues)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.lora)
    metrics = dict(
        parts, loss=loss, weight=weight, valid_instances=num_valid,
        given_instances=jnp.sum(batch["instance_valid"], dtype=jnp.int32),
    )  # fmt: skip
    if resam:
        # Pseudo-label diagnostics against the GT masks, which ReSAM never trains on: how
        # good the teacher's point masks, the refined masks and the targets are.
        gt, given = batch["masks"], batch["instance_valid"]
        metrics.update(
            overlap_fraction=jnp.mean(pseudo.overlap_fraction),
            teacher_point_iou=masked_mean_iou(pseudo.point_masks, gt, given),
            refined_iou=masked_mean_iou(pseudo.refined, gt, given),
            target_iou=masked_mean_iou(targets, gt, valid),
        )
    return jax.lax.stop_gradient(queues), grads, metrics


def apply_or_skip(
    state: TrainState,
    grads: nnx.State,
    queues: FeatureQueues | None,
    loss: jax.Array,
    num_valid: jax.Array,
    optimizer: optax.GradientTransformation,
    method: ml_collections.ConfigDict,
) -> tuple[TrainState, nnx.State, jax.Array]:
    """The optimiser update, the teacher's EMA and the new queues, unless the loss is not
    finite, exceeds outlier_factor x the mean of the loss window (train_state.LossWindow,
    method.outlier_rule) or no instance is valid: then parameters, optimiser state, teacher and
    queues stay as they were. `step` advances either way, the loss window as its rule says.
    Returns (the state after the step, the updates as computed, whether the step was skipped).
    """
    outlier, loss_window = state.loss_window.check(loss, method.outlier_factor, method.outlier_rule)
    skipped = outlier | (num_valid == 0)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.lora)
    lora = optax.apply_updates(state.lora, updates)
    resam = method.mode == "resam"
    updated = state.replace(
        lora=lora,
        opt_state=opt_state,
        teacher_lora=ema_update(state.teacher_lora, lora, method.ema_rate) if resam else None,
        ssa_queues=queues,
        loss_window=loss_window,
    )
    new_state = jax.tree.map(lambda old, new: jnp.where(skipped, old, new), state, updated)
    if method.outlier_rule == "public":
        # The public LossWatcher sees every loss of a step that had pseudo-labels, the
        # rejected ones too (a step without any is skipped before the watcher).
        loss_window = jax.tree.map(
            lambda old, new: jnp.where(num_valid > 0, new, old), state.loss_window, loss_window
        )
        new_state = new_state.replace(loss_window=loss_window)
    return new_state.replace(step=state.step + 1), updates, skipped


def train_step(
    state: TrainState,
    frozen: nnx.State,
    batch: Batch,
    *,
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    steps_per_epoch: int,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update: micro_step over the batch (or over its micro-batches in a scan), the
    weighted mean of their gradients, apply_or_skip; returns the state and the step's metrics.

    Gradient accumulation (train.grad_accum_steps = k > 1): the batch is cut into k
    micro-batches (instances.split_micro_batches) that a jax.lax.scan runs in turn, each with its
    own teacher pass, student pass and gradient, before ONE optimiser update. The SSA queues take
    each micro-batch's features in turn (a micro-batch's SSA loss sees the queue after its own
    push). Micro-batch m counts by its valid instances n_m: the update's loss is
        L = sum_m n_m L_m / sum_m n_m
    (the focal, dice and IoU terms are exactly those of one step on the whole batch; the SSA
    term is the n_m-weighted mean of the micro-batches'), the gradient is that of L, and the
    outlier rule sees L once per update. The pseudo-label diagnostics are means over the
    micro-batches.
    """
    method = config.method
    step_of = functools.partial(micro_step, graphdef, config, steps_per_epoch, state)
    micro_batches = config.train.grad_accum_steps
    if micro_batches == 1:
        queues, grads, micro = step_of(state.ssa_queues, frozen, batch)
        micro = jax.tree.map(lambda x: x[None], micro)
    else:

        def accumulate_micro_batch(carry, micro_batch):
            queues, summed = carry
            queues, grads, metrics = step_of(queues, frozen, micro_batch)
            return (queues, jax.tree.map(jnp.add, summed, grads)), metrics

        zeros = jax.tree.map(jnp.zeros_like, state.lora)
        (queues, grads), micro = jax.lax.scan(
            accumulate_micro_batch,
            (state.ssa_queues, zeros),
            split_micro_batches(batch, micro_batches),
        )
    total_weight = jnp.maximum(jnp.sum(micro["weight"]), 1.0)
    grads = jax.tree.map(lambda g: g / total_weight, grads)
    means = {
        name: jnp.sum(micro["weight"] * value) / total_weight
        for name, value in micro.items()
        if name in WEIGHTED_TERMS
    }
    num_valid = jnp.sum(micro["valid_instances"])
    optimizer = make_optimizer(config.optim)
    new_state, updates, skipped = apply_or_skip(
        state, grads, queues, means["loss"], num_valid, optimizer, method
    )
    metrics = dict(
        means,
        skipped=skipped,
        valid_instances=num_valid,
        learning_rate=learning_rate_schedule(config.optim)(updates_applied(state.opt_state)),
        grad_norm=optax.tree.norm(grads),
        update_norm=optax.tree.norm(updates),  # as computed, also when the step is skipped
    )
    if method.mode == "resam":
        given = jnp.sum(micro["given_instances"])
        metrics.update(
            {
                name: jnp.mean(micro[name])
                for name in ("overlap_fraction", "teacher_point_iou", "refined_iou")
            },
            pseudo_label_kept_fraction=num_valid / jnp.maximum(given, 1),
            target_iou=jnp.mean(micro["target_iou"]),
        )
    return new_state, metrics


def make_train_step(
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, steps_per_epoch: int
) -> TrainStep:
    """train_step for config.method.mode ("resam" or "supervised") with its settings bound, a
    pure `(state, frozen, batch) -> (state, metrics)` for the caller to jit with its shardings
    (donating the state).

    Args:
        graphdef: from resam_jax.method.train_state.split_model.
        config: the run configuration (resam_jax.config.base_config).
        steps_per_epoch: the epoch (which drives the SSA weight) is derived from the step count.
    """
    if config.method.mode not in TRAIN_MODES:
        raise ValueError(
            f"method.mode={config.method.mode!r} does not train; expected one of {TRAIN_MODES}"
        )
    if config.train.grad_accum_steps < 1:
        raise ValueError(
            f"train.grad_accum_steps={config.train.grad_accum_steps} must be at least 1"
        )
    if config.train.instance_chunk_size < 0:
        raise ValueError(
            f"train.instance_chunk_size={config.train.instance_chunk_size} must be 0 or positive"
        )
    return functools.partial(
        train_step, graphdef=graphdef, config=config, steps_per_epoch=steps_per_epoch
    )
