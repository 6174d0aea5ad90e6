"""Data parallelism: 1 device vs 8 simulated CPU devices, and two processes on loopback."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

# Trains 2 supervised steps of the tiny demo model and saves the final LoRA leaves.
WORKER = textwrap.dedent(
    """
    import importlib.util, sys
    import numpy as np
    manual_dir, data_dir, workdir, batch_size, out, coordinator, process_id = sys.argv[1:8]
    from resam_jax import parallel
    if coordinator != "-":
        parallel.initialize_distributed(coordinator, 2, int(process_id))
    import jax
    from resam_jax import run
    spec = importlib.util.spec_from_file_location("demo", "configs/demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    config = demo.get_config()
    config.data.update(manual_dir=manual_dir, data_dir=data_dir, synthetic_images=8, image_size=64,
                       batch_size=int(batch_size))
    config.model.checkpoint = ""  # random init: the packaged tiny SAM is for 128 inputs
    config.method.mode = "supervised"
    config.optim.warmup_steps = 0
    config.train.update(max_steps=2, eval_before_training=False, num_overlays=0, log_every_steps=1)
    result = run.train_and_evaluate(config, workdir)
    assert jax.device_count() == int(sys.argv[8]), jax.devices()
    leaves = jax.tree_util.tree_leaves_with_path(result["lora"])
    np.savez(out, **{jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves})
    """
)


def _start(args, local_devices: int, global_devices: int):
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    environment["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={local_devices}"
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, *map(str, args), str(global_devices)],
        cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _finish(process, timeout):
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"worker timed out after {timeout}s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]


def _leaves(path) -> dict[str, np.ndarray]:
    """The saved LoRA leaves by path; asserts that training moved every LoRA B off zero (A is
    random from the start, so only B shows that steps were taken)."""
    with np.load(path) as f:
        leaves = {name: f[name] for name in f.files}
    b_leaves = [leaf for name, leaf in leaves.items() if "lora_b" in name]
    assert b_leaves and all(np.abs(leaf).max() > 0 for leaf in b_leaves), sorted(leaves)
    return leaves


def test_one_device_and_eight_devices_train_the_same(tmp_path, synthetic_data):
    results = {}
    for devices in (1, 8):
        out = tmp_path / f"lora_{devices}.npz"
        process = _start(
            [*synthetic_data, tmp_path / f"run_{devices}", 8, out, "-", 0], devices, devices
        )
        _finish(process, timeout=400)
        results[devices] = _leaves(out)
    assert results[1].keys() == results[8].keys()
    for name in results[1]:
        np.testing.assert_allclose(results[1][name], results[8][name], rtol=1e-4, atol=1e-6)


def test_two_processes_end_with_identical_parameters(tmp_path, synthetic_data):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    coordinator = f"127.0.0.1:{port}"
    outs = [tmp_path / f"lora_process_{i}.npz" for i in range(2)]
    processes = [
        _start([*synthetic_data, tmp_path / "run", 2, outs[i], coordinator, i], 1, 2)
        for i in range(2)
    ]
    for process in processes:
        _finish(process, timeout=400)
    first, second = _leaves(outs[0]), _leaves(outs[1])
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
