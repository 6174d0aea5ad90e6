"""One ReSAM train step (docs/method.md section 4) as a pure jitted function.

    step = jax.jit(make_train_step(graphdef, config, steps_per_epoch), donate_argnums=0)
    state, metrics = step(state, frozen, batch)

Mode "resam": the teacher (EMA of the student's LoRA) encodes the weak view once; Refine and
Requery both decode from that embedding to make box-prompted pseudo-labels; the student encodes
the strong view and decodes with the original points; the loss is
    focal_weight * focal + dice_weight * dice + iou_weight * IoU-MSE + beta(epoch) * SSA
over the instances that survive Requery. Mode "supervised": the student learns the GT masks on
the weak view with the same losses, without teacher or SSA. Mode "direct" does not train.

Instance chunks (train.instance_chunk_size = k > 0): the mask decoder repeats the image
embedding for every instance and upsamples every mask to the input frame, so at 50 instances
per image its activations, not the encoder's, fill memory (ViT-B at 1024: 8.0 GiB compiled,
against 2.5 GiB at 8 instances). The teacher's decodes and the student's decode-and-loss run k
instance slots at a time (in_instance_chunks), the student's recomputed in the backward pass:
the same numbers, the activations of k instances alive at a time.

A step whose loss is not finite, exceeds outlier_factor x the mean of the loss window
(train_state.LossWindow, method.outlier_rule), or has no valid instance is skipped inside the
jitted function: parameters, optimiser state, teacher and queues stay as they were; only `step`
advances, and the loss window as its rule says.

Gradient accumulation (train.grad_accum_steps = k > 1): the batch is cut into k micro-batches
(split_micro_batches) that a jax.lax.scan runs in turn, each with its own teacher pass, student
pass and gradient, before ONE optimiser update; only one micro-batch's activations are alive at
a time. The SSA queues take each micro-batch's features in turn (a micro-batch's SSA loss sees
the queue after its own push, so its gradient flows through its own features only). Each
micro-batch m counts by its valid instances n_m: the update's loss is
    L = sum_m n_m L_m / sum_m n_m
(so the focal, dice and IoU terms, means over valid instances, are exactly those of one step on
the whole batch; the SSA term is the n_m-weighted mean of the micro-batches' SSA terms), the
gradient is that of L, and the outlier rule sees L once per update. The teacher, the SSA weight
and the loss window change once per update. The pseudo-label diagnostics are means over the
micro-batches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from resam_jax.losses import instance_losses, masked_mean
from resam_jax.metrics import masked_mean_iou
from resam_jax.model import Sam, decode_masks, normalize_pixels
from resam_jax.optim import learning_rate_schedule, make_optimizer, updates_applied
from resam_jax.stages.refine import refine_masks
from resam_jax.stages.reinforce import FeatureQueues, reinforce, ssa_weight
from resam_jax.stages.requery import pseudo_labels, requery_prompts
from resam_jax.train_state import TRAIN_MODES, TrainState, ema_update

Batch = Mapping[str, jax.Array]
TrainStep = Callable[[TrainState, nnx.State, Batch], tuple[TrainState, dict[str, jax.Array]]]


class PseudoLabels(NamedTuple):
    weak_embedding: jax.Array  # [B, E, E, C] teacher embedding of the weak view
    point_masks: jax.Array  # bool [B, N, S, S] point-prompted teacher masks (logit > 0)
    refined: jax.Array  # bool [B, N, S, S] Refine's confident, overlap-free pixels
    boxes: jax.Array  # float32 [B, N, 4] tight boxes of the refined masks (Requery prompts)
    masks: jax.Array  # bool [B, N, S, S] box-prompted teacher masks
    valid: jax.Array  # bool [B, N] instances whose refined mask is not empty
    overlap_fraction: jax.Array  # float32 [B] share of refined pixels removed as overlaps


def teacher_pseudo_labels(
    teacher: Sam,
    weak_image: jax.Array,
    point_prompts: Mapping[str, jax.Array],
    instance_valid: jax.Array,
    refine_threshold: float,
    instance_chunk: int = 0,
) -> PseudoLabels:
    """Refine and Requery: one encoding of the weak view serves both teacher decodes.

    Args:
        teacher: the model with the teacher's LoRA.
        weak_image: normalised weak view [B, S, S, 3].
        point_prompts: {"points", "point_labels"} of the batch.
        instance_valid: bool [B, N].
        refine_threshold: see refine_masks.
        instance_chunk: the decoder runs on this many instance slots at a time
            (in_instance_chunks; 0: all at once).
    """
    image_size = weak_image.shape[1]
    weak_embedding = teacher.encode(weak_image)

    def decode(prompts: Batch) -> jax.Array:
        return decode_masks(teacher, weak_embedding, image_size, **prompts)[0]

    refine_logits = in_instance_chunks(decode, point_prompts, instance_chunk)
    refined, overlap_fraction = refine_masks(refine_logits, instance_valid, refine_threshold)
    boxes, valid = requery_prompts(refined, instance_valid)
    requery_logits = in_instance_chunks(decode, {"boxes": boxes}, instance_chunk)
    return PseudoLabels(
        weak_embedding, refine_logits > 0, refined, boxes, pseudo_labels(requery_logits), valid,
        overlap_fraction,
    )  # fmt: skip


def split_micro_batches(batch: Batch, micro_batches: int) -> Batch:
    """[B, ...] -> [micro_batches, B / micro_batches, ...]. Micro-batch m holds images m,
    m + micro_batches, ...: with the batch sharded along its first axis, every device's shard
    splits into micro-batches of its own images (when micro_batches divides the per-device
    batch), so each micro-step runs on all devices."""
    size = jax.tree.leaves(batch)[0].shape[0]
    if size % micro_batches:
        raise ValueError(
            f"a batch of {size} images does not split into train.grad_accum_steps="
            f"{micro_batches} equal micro-batches"
        )

    def split(x: jax.Array) -> jax.Array:
        return jnp.swapaxes(x.reshape(size // micro_batches, micro_batches, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def in_instance_chunks(fn: Callable[[Batch], Batch], instances: Batch, chunk: int) -> Batch:
    """fn(instances) for arrays [B, N, ...] whose results are [B, N, ...], `chunk` instance
    slots at a time (0, or chunk >= N: all at once).

    The chunks run in a jax.lax.scan, each under jax.checkpoint: the backward pass keeps only
    each chunk's inputs and recomputes its forward, so the activations of one chunk, not of all
    N instances, are alive at a time. N is padded with empty slots to a multiple of `chunk`;
    their results are dropped. Every instance is computed on its own (fn must not mix
    instances), so the result equals fn(instances) up to float rounding.
    """
    num = jax.tree.leaves(instances)[0].shape[1]
    if chunk == 0 or chunk >= num:
        return fn(instances)
    num_chunks = -(-num // chunk)

    def to_chunks(x: jax.Array) -> jax.Array:  # [B, N, ...] -> [num_chunks, B, chunk, ...]
        pad = [(0, 0), (0, num_chunks * chunk - num)] + [(0, 0)] * (x.ndim - 2)
        x = jnp.pad(x, pad).reshape(x.shape[0], num_chunks, chunk, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    def from_chunks(y: jax.Array) -> jax.Array:  # [num_chunks, B, chunk, ...] -> [B, N, ...]
        y = jnp.moveaxis(y, 0, 1)
        return y.reshape(y.shape[0], num_chunks * chunk, *y.shape[3:])[:, :num]

    def body(carry: None, chunk_instances: Batch) -> tuple[None, Batch]:
        return carry, jax.checkpoint(fn)(chunk_instances)

    _, results = jax.lax.scan(body, None, jax.tree.map(to_chunks, instances))
    return jax.tree.map(from_chunks, results)


def make_train_step(
    graphdef: nnx.GraphDef, config: ml_collections.ConfigDict, steps_per_epoch: int
) -> TrainStep:
    """The train step for config.method.mode ("resam" or "supervised"), a pure function for
    the caller to jit with its shardings (donating the state).

    Args:
        graphdef: from resam_jax.train_state.split_model.
        config: the run configuration (resam_jax.config.base_config).
        steps_per_epoch: the epoch (which drives the SSA weight) is derived from the step count.
    """
    method = config.method
    if method.mode not in TRAIN_MODES:
        raise ValueError(
            f"method.mode={method.mode!r} does not train; expected one of {TRAIN_MODES}"
        )
    resam = method.mode == "resam"
    optimizer = make_optimizer(config.optim)
    schedule = learning_rate_schedule(config.optim)
    pixel_norm = config.model.pixel_norm
    num_epochs = config.train.num_epochs
    grad_accum_steps = config.train.grad_accum_steps
    if grad_accum_steps < 1:
        raise ValueError(f"train.grad_accum_steps={grad_accum_steps} must be at least 1")
    accumulate = grad_accum_steps > 1
    instance_chunk = config.train.instance_chunk_size
    if instance_chunk < 0:
        raise ValueError(f"train.instance_chunk_size={instance_chunk} must be 0 or positive")

    def micro_step(
        state: TrainState, queues: FeatureQueues | None, frozen: nnx.State, batch: Batch
    ) -> tuple[FeatureQueues | None, nnx.State, dict[str, jax.Array]]:
        """Loss and LoRA gradient of one micro-batch: (queues after it, gradient of
        weight * loss, per-micro-batch metrics with that weight)."""
        weak_image = normalize_pixels(batch["weak_image"], batch["content_mask"], pixel_norm)
        image_size = weak_image.shape[1]
        point_prompts = {"points": batch["points"], "point_labels": batch["point_labels"]}

        if resam:
            teacher = nnx.merge(graphdef, state.teacher_lora, frozen)
            pseudo = teacher_pseudo_labels(
                teacher, weak_image, point_prompts, batch["instance_valid"],
                method.refine_threshold, instance_chunk,
            )  # fmt: skip
            # Requery's box-prompted masks, or (the "Refine only" ablation) the refined masks.
            targets = pseudo.masks if method.requery else pseudo.refined
            valid = pseudo.valid
            student_image = normalize_pixels(
                batch["strong_image"], batch["content_mask"], pixel_norm
            )
        else:
            targets, valid = batch["masks"], batch["instance_valid"]
            student_image = weak_image
        num_valid = jnp.sum(valid, dtype=jnp.int32)
        # Accumulated micro-batches count by their valid instances (module docstring).
        weight = num_valid.astype(jnp.float32) if accumulate else jnp.float32(1.0)

        def decode_losses(lora: nnx.State, embedding: jax.Array, instances: Batch) -> Batch:
            """Per-instance losses [B, n] of the student's point-prompted masks for `instances`
            ({"points", "point_labels", "targets"} of n instance slots)."""
            student = nnx.merge(graphdef, lora, frozen)
            logits, iou_predictions = decode_masks(
                student, embedding, image_size, points=instances["points"],
                point_labels=instances["point_labels"],
            )  # fmt: skip
            return instance_losses(
                logits, iou_predictions, instances["targets"], method.focal_alpha,
                method.focal_gamma, method.iou_target_on,
            )  # fmt: skip

        def loss_fn(lora):
            student = nnx.merge(graphdef, lora, frozen)
            embedding = student.encode(student_image)
            instances = dict(point_prompts, targets=targets)
            per_instance = in_instance_chunks(
                functools.partial(decode_losses, lora, embedding), instances, instance_chunk
            )
            parts = {name: masked_mean(values, valid) for name, values in per_instance.items()}
            total = (
                method.focal_weight * parts["focal"]
                + method.dice_weight * parts["dice"]
                + method.iou_weight * parts["iou"]
            )
            new_queues = None
            if resam:
                stride = image_size // embedding.shape[1]
                parts["ssa"], new_queues = reinforce(
                    queues, pseudo.weak_embedding, embedding, pseudo.boxes, valid,
                    stride, method.ssa_form, method.ssa_tau,
                )  # fmt: skip
                epoch = state.step // steps_per_epoch + 1
                parts["ssa_weight"] = ssa_weight(epoch, num_epochs, method.ssa_max_weight)
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

    def train_step(
        state: TrainState, frozen: nnx.State, batch: Batch
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        if not accumulate:
            queues, grads, micro = micro_step(state, state.ssa_queues, frozen, batch)
            micro = jax.tree.map(lambda x: x[None], micro)
        else:

            def accumulate_micro_batch(carry, micro_batch):
                queues, summed = carry
                queues, grads, metrics = micro_step(state, queues, frozen, micro_batch)
                return (queues, jax.tree.map(jnp.add, summed, grads)), metrics

            zeros = jax.tree.map(jnp.zeros_like, state.lora)
            (queues, grads), micro = jax.lax.scan(
                accumulate_micro_batch,
                (state.ssa_queues, zeros),
                split_micro_batches(batch, grad_accum_steps),
            )
        total_weight = jnp.maximum(jnp.sum(micro["weight"]), 1.0)
        grads = jax.tree.map(lambda g: g / total_weight, grads)
        means = {
            name: jnp.sum(micro["weight"] * value) / total_weight
            for name, value in micro.items()
            if name in ("loss", "focal", "dice", "iou", "ssa", "ssa_weight")
        }
        loss = means["loss"]
        num_valid = jnp.sum(micro["valid_instances"])
        outlier, loss_window = state.loss_window.check(
            loss, method.outlier_factor, method.outlier_rule
        )
        skipped = outlier | (num_valid == 0)

        updates, opt_state = optimizer.update(grads, state.opt_state, state.lora)
        lora = optax.apply_updates(state.lora, updates)
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
        new_state = new_state.replace(step=state.step + 1)

        metrics = dict(
            means,
            skipped=skipped,
            valid_instances=num_valid,
            learning_rate=schedule(updates_applied(state.opt_state)),
            grad_norm=optax.tree.norm(grads),
            update_norm=optax.tree.norm(updates),  # as computed, also when the step is skipped
        )
        if resam:
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

    return train_step
