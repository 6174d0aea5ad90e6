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
# XLA:CPU's YNNPACK fusions (jaxlib 0.10) fuse a matmul with the elementwise work around it
# (bias adds, LayerNorm scale and shift) and take those operands as full-size arrays: each
# bias is broadcast to the activation's shape ([1, 256, 256, 448] floats, 112 MB, in Hiera's
# first stage), and a broadcast the teacher's and the student's encoder passes share stays
# alive from the first pass to the last. SAM 2.1 b+'s train step at 1024 compiled to 2.86 GiB
# of temporaries with them, 1.18 GiB with YNNPACK running the dots alone
# ("individual_dot"; XLA fuses the elementwise work itself); SAM ViT-B's: 2.16 -> 1.22 GiB
# (docs/benchmarks.md). The flag exists from jaxlib 0.10 (checked there); older versions,
# which would refuse an unknown flag, do not get it.
CPU_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
CPU_YNN_FUSIONS = "individual_dot"
CPU_YNN_MIN_JAXLIB = (0, 10)


def default_xla_flags() -> dict[str, str]:
    """The XLA flags the run commands set (flag -> value), for the installed jaxlib."""
    import jaxlib

    flags = {CPU_SCHEDULER_FLAG: "false"}
    version = tuple(int(part) for part in jaxlib.__version__.split(".")[:2] if part.isdigit())
    if version >= CPU_YNN_MIN_JAXLIB:
        flags[CPU_YNN_FLAG] = CPU_YNN_FUSIONS
    return flags


def set_default_xla_flags() -> None:
    """Adds each of default_xla_flags() (`CPU_SCHEDULER_FLAG=false`, `CPU_YNN_FLAG=
    individual_dot`) to XLA_FLAGS unless the flag is already set there (a user's value wins).
    XLA reads XLA_FLAGS once, when the first backend starts: call this before anything asks
    JAX for a device (the run commands do, in `run.cli.run_command`)."""
    flags = os.environ.get("XLA_FLAGS", "")
    for flag, value in default_xla_flags().items():
        if flag not in flags:
            flags = f"{flags} {flag}={value}".strip()
    os.environ["XLA_FLAGS"] = flags


# JAX's event after each XLA compilation (jax._src.dispatch.BACKEND_COMPILE_EVENT), fired
# between compiling a program and its first run; persistent-cache hits fire it too.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_trimming = False


def trim_host_heap() -> bool:
    """Hands the heap memory this process has freed back to the operating system (glibc's
    malloc_trim); whether it could (False where there is no glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def release_memory_after_compiles() -> None:
    """Trims the host heap (trim_host_heap) after every XLA compilation of this process, once
    registered (again: nothing). XLA's compiler frees most of what it allocates, but glibc keeps
    freed heap resident, and the compiled program's buffers come on top of it: SAM 2.1 b+'s
    train step at 1024 on CPU compiled with 0.87 GiB of such heap and peaked at 3.14 GiB
    resident, 2.50 GiB with the trim (docs/benchmarks.md). A trim takes milliseconds."""
    global _trimming
    if _trimming:
        return
    _trimming = True

    def after_compile(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            trim_host_heap()

    jax.monitoring.register_event_duration_secs_listener(after_compile)


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
