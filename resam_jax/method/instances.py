"""Instance slots in chunks and batches in micro-batches: the two ways a train step bounds the
activations alive at a time (docs/benchmarks.md has the memory they save)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp

Batch = Mapping[str, jax.Array]


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
