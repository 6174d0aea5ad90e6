"""Data parallelism over every device of every host: a ("data",) mesh, the global batch
sharded along it, everything else replicated.

Multi-host runs start with `initialize_distributed()`: on Cloud TPU JAX finds the coordinator
by itself; elsewhere it comes from the flags or the JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"

# XLA:CPU's default scheduler ("concurrency optimised") moves the recomputation of
# rematerialised encoder blocks forward, next to the original computation, so their residuals
# are alive again at the peak and remat saves nothing at 1024 x 1024 (docs/benchmarks.md).
# XLA's sequential scheduler keeps the recomputation in the backward pass. CPU only: GPU and
# TPU programs do not read it.
CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler"


def set_default_xla_flags() -> None:
    """Adds `CPU_SCHEDULER_FLAG=false` to XLA_FLAGS unless the flag is already set there (a
    user's value wins). XLA reads XLA_FLAGS once, when the first backend starts: call this before
    anything asks JAX for a device (the run commands do, in `run.cli.run_command`)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if CPU_SCHEDULER_FLAG not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {CPU_SCHEDULER_FLAG}=false".strip()


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins a multi-process run when one is described; a single-process run does nothing.

    A run is multi-process when a coordinator is given (argument or JAX_COORDINATOR_ADDRESS)
    or when running on a Cloud TPU VM (TPU_WORKER_HOSTNAMES set by the TPU runtime, where
    jax.distributed.initialize() discovers everything itself).
    """
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    on_cloud_tpu = "TPU_WORKER_HOSTNAMES" in os.environ
    if not coordinator_address and not on_cloud_tpu:
        return
    # Collectives between CPU processes (tests, CPU clusters); accelerators ignore it. Asking
    # for the backend here would start it, which must wait until after initialize().
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def data_mesh() -> Mesh:
    """A 1-D mesh over all devices of all processes. Auto axes: the steps are written for one
    device and XLA propagates the batch sharding through them."""
    return jax.make_mesh(
        (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def per_host_batch_size(global_batch_size: int) -> int:
    """This process's share of the global batch; the batch must fill every device evenly."""
    devices, processes = jax.device_count(), jax.process_count()
    if global_batch_size % devices:
        raise ValueError(
            f"config.data.batch_size={global_batch_size} is the global batch and must be a "
            f"multiple of the {devices} devices ({processes} process(es)); use e.g. "
            f"--config.data.batch_size={devices * max(1, global_batch_size // devices)}"
        )
    return global_batch_size // processes


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's rows into global arrays sharded along the batch axis."""
    sharding = batch_sharded(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }


def replicate(tree, mesh: Mesh):
    """Places a pytree that every process holds identically on all devices, replicated."""
    sharding = replicated(mesh)

    def place(value):
        value = np.asarray(value)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, tree)
