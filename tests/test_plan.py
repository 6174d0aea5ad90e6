"""The memory and FLOP planner (benchmarks/plan.py) and the peak-FLOP/s table behind the
train-step benchmark's MFU (benchmarks/peak_flops.py), issue 11.

The planner compiles the train step on abstract shapes; what it reports must move the way the
program does: the arguments grow by exactly one more image's batch arrays per extra image, the
model FLOPs double with the batch, and remat "blocks" trades FLOPs (recomputation) for
temporaries. A planner that ignored the batch size, compiled the wrong remat option or read
the wrong field of XLA's analysis fails here.
"""

import numpy as np
import pytest
from data_fixtures import run_module

from benchmarks.peak_flops import PEAKS, datasheet_peak
from benchmarks.plan import plan
from benchmarks.train_step import abstract_batch

SIZE, INSTANCES = 256, 8  # the tiny SAM at its own input size


@pytest.fixture(scope="module")
def plans():
    return {
        batch: plan("tiny", SIZE, batch, INSTANCES, ("reference",), ("none", "blocks"))
        for batch in (1, 2)
    }


def options(result: dict) -> dict[str, dict]:
    return {o["remat"]: o for o in result["options"]}


def test_arguments_grow_by_one_batch_per_image(plans):
    # The ReSAM step reads neither the GT boxes nor the geometry fields, and jit drops the
    # arguments a program does not use.
    unused = ("boxes", "image_id", "original_size", "resized_size", "pad_offset")
    one_image = sum(
        np.prod(s.shape) * np.dtype(s.dtype).itemsize
        for key, s in abstract_batch(SIZE, INSTANCES, 1).items()
        if key not in unused
    )
    for remat in ("none", "blocks"):
        one, two = options(plans[1])[remat], options(plans[2])[remat]
        assert two["argument_bytes"] - one["argument_bytes"] == one_image
        # Parameters and optimiser state dominate at batch 1 and do not grow.
        assert two["argument_bytes"] < 2 * one["argument_bytes"]
        for o in (one, two):
            assert o["total_bytes"] == (
                o["argument_bytes"] + o["output_bytes"] + o["temp_bytes"] - o["alias_bytes"]
            )
            # The state is donated: the new state is written over it.
            assert 0 < o["alias_bytes"] <= o["output_bytes"]


def test_model_flops_scale_with_the_batch(plans):
    ratio = plans[2]["model_flops"] / plans[1]["model_flops"]
    assert 1.9 < ratio < 2.1, ratio


def test_remat_trades_flops_for_temporaries(plans):
    for result in plans.values():
        none, blocks = options(result)["none"], options(result)["blocks"]
        assert blocks["temp_bytes"] < none["temp_bytes"]
        assert blocks["flops"] > none["flops"]  # the forward of the LoRA blocks runs twice
        # Reference attention has no loop, so XLA counts all of it: the model FLOPs (the
        # lowered step, before XLA's rewrites) are within 10% of the compiled count.
        assert abs(none["flops"] / result["model_flops"] - 1) < 0.1


@pytest.mark.parametrize(
    "device_kind,dtype,name,tflops",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", "NVIDIA H100 SXM", 989),
        ("NVIDIA H100 PCIe", "float32", "NVIDIA H100 PCIe", 378),
        ("NVIDIA H200", "bfloat16", "NVIDIA H200 SXM", 989),
        ("NVIDIA A100-SXM4-40GB", "float32", "NVIDIA A100", 156),
        ("TPU v5 lite", "bfloat16", "TPU v5e", 197),
        ("TPU v5p", "bfloat16", "TPU v5p", 459),
        ("TPU v4", "float32", "TPU v4", 275),
    ],
)
def test_datasheet_peaks(device_kind, dtype, name, tflops):
    peak, source = datasheet_peak(device_kind, dtype)
    assert peak == tflops * 1e12
    assert source.startswith(name)


def test_unknown_devices_have_no_datasheet_peak():
    assert datasheet_peak("cpu", "float32") is None
    assert datasheet_peak("AMD EPYC 9B14", "bfloat16") is None
    assert all(len(row) == 4 for row in PEAKS)


def test_cli_prints_an_option_row():
    code, output = run_module(
        "benchmarks.plan", "--model-type", "tiny", "--instances", "4", "--remat", "blocks",
        "--no-peak",
    )  # fmt: skip
    assert code == 0, output
    assert "SAM tiny, 256x256, 1 image(s) per device" in output
    (row,) = [line for line in output.splitlines() if line.startswith("chunked 128 ")]
    remat, *gib = row.split()[2:8]  # args, out, temp, aliased, total GiB
    assert remat == "blocks" and float(gib[4]) > float(gib[2]) > 0


def test_cli_plans_a_sam2_step():
    """--family sam2 (issue 22): the SAM 2 step as configs/*_sam2.py set it, LoRA from half the
    Hiera blocks; the tests' small Hiera at 64 px."""
    code, output = run_module(
        "benchmarks.plan", "--family", "sam2", "--model-type", "hiera_test", "--image-size", "64",
        "--instances", "4", "--remat", "blocks", "--no-peak",
    )  # fmt: skip
    assert code == 0, output
    assert "SAM 2.1 hiera_test, 64x64, 1 image(s) per device, LoRA from block 4" in output
    (row,) = [line for line in output.splitlines() if line.startswith("chunked 128 ")]
    remat, *gib = row.split()[2:8]
    assert remat == "blocks" and float(gib[4]) > float(gib[2]) > 0


def test_cli_rejects_an_empty_batch():
    code, output = run_module("benchmarks.plan", "--model-type", "tiny", "--batch", "0")
    assert code == 2
    assert "--batch=0 and --instances=50 must be at least 1" in output
    assert "Traceback" not in output
