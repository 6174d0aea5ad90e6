"""The XLA flags and the heap trim the run commands set up before JAX starts
(resam_jax/parallel.py: set_default_xla_flags, release_memory_after_compiles)."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from resam_jax import parallel


@pytest.fixture
def xla_flags(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    return monkeypatch


def test_both_flags_are_added_on_jaxlib_0_10(xla_flags):
    xla_flags.setattr("jaxlib.__version__", "0.10.2")
    parallel.set_default_xla_flags()
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_cpu_enable_concurrency_optimized_scheduler=false",
        "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    ]


def test_a_jaxlib_without_the_ynnpack_flag_does_not_get_it(xla_flags):
    """XLA aborts the process on a flag it does not know."""
    xla_flags.setattr("jaxlib.__version__", "0.9.2")
    assert parallel.default_xla_flags() == {parallel.CPU_SCHEDULER_FLAG: "false"}


def test_the_users_value_wins(xla_flags):
    xla_flags.setattr("jaxlib.__version__", "0.10.2")
    xla_flags.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 "
                     "--xla_cpu_experimental_ynn_fusion_type=default")  # fmt: skip
    parallel.set_default_xla_flags()
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=2",
        "--xla_cpu_experimental_ynn_fusion_type=default",
        "--xla_cpu_enable_concurrency_optimized_scheduler=false",
    ]


def test_the_installed_xla_accepts_the_flags_and_trims_once_per_compile():
    """In a fresh process (XLA reads XLA_FLAGS once): the installed jaxlib starts with the flags,
    and the heap is trimmed after each compilation, once however often the trim is asked for."""
    script = textwrap.dedent(
        """
        import os
        os.environ.pop("XLA_FLAGS", None)
        from resam_jax import parallel
        calls = []
        parallel.trim_host_heap = lambda: calls.append(1) or True
        parallel.set_default_xla_flags()
        parallel.release_memory_after_compiles()
        import jax, jax.numpy as jnp
        x = jnp.ones((4, 3))
        assert float(jax.jit(lambda x: (x @ x.T).sum())(x)) == 48.0
        before = len(calls)
        jax.jit(lambda x: (x * 2).sum())(x).block_until_ready()
        first = len(calls) - before
        parallel.release_memory_after_compiles()
        jax.jit(lambda x: (x * 3).sum())(x).block_until_ready()
        print(os.environ["XLA_FLAGS"], first, len(calls) - before - first)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    *flags, first, second = result.stdout.split()
    assert set(flags) == {f"{k}={v}" for k, v in parallel.default_xla_flags().items()}
    assert int(first) >= 1 and int(second) == int(first), result.stdout


def test_the_heap_trim_runs_here():
    assert parallel.trim_host_heap() is (platform.libc_ver()[0] == "glibc")
