"""The benchmarks time steps that TRAIN (issue 18): the random-weight model of the train-step
benchmarks (benchmarks/jax_step.py, benchmarks/torch_step.py: mask logits scaled by
MASK_LOGIT_SCALE) keeps pseudo-labels, so the resam-jax step is not skipped and both steps
learn from valid instances. Without the scale every teacher mask is empty and the resam-jax
step is skipped: a benchmark that would time such a step fails here. The same for the SAM 2.1
steps (issue 22: benchmarks/train_step.py --family sam2), on the tests' small Hiera.
"""

import os

import jax
import numpy as np
import pytest

from benchmarks.jax_step import (
    StepDoesNotTrain,
    assert_trains,
    build_jax_step,
    concrete_state,
    lora_changed,
    sam2_model_config,
    synthetic_batch,
)
from benchmarks.torch_step import public_train_step, scale_mask_logits_, torch_sam, torch_sam2
from resam_jax.models.sam import sam_config


def jax_metrics(model_type: str, image_size: int, instances: int, lora_start_layer: int) -> dict:
    jax_step = build_jax_step(
        model_type, image_size, "chunked", "blocks", lora_start_layer=lora_start_layer
    )
    state, frozen = concrete_state(jax_step)
    state, metrics = jax_step.step(state, frozen, synthetic_batch(image_size, instances))
    return {key: float(value) for key, value in metrics.items() if np.ndim(value) == 0}


def torch_notes(model_type: str, instances: int, lora_start_layer: int) -> dict:
    config = sam_config(model_type)
    sam = scale_mask_logits_(torch_sam(config))
    step, notes = public_train_step(
        sam, synthetic_batch(config.image_size, instances), lora_start_layer=lora_start_layer
    )
    step()
    return notes


@pytest.mark.parametrize("instances", [8, 50])
def test_the_tiny_benchmark_steps_train(instances):
    metrics = jax_metrics("tiny", 256, instances, lora_start_layer=0)
    assert_trains(metrics, "resam-jax")
    assert metrics["skipped"] == 0 and metrics["valid_instances"] >= instances // 2, metrics
    assert np.isfinite(metrics["loss"])
    notes = torch_notes("tiny", instances, lora_start_layer=0)
    assert_trains(notes, "PyTorch")
    assert np.isfinite(notes["loss"])


def test_the_tiny_sam2_benchmark_steps_train():
    """benchmarks/train_step.py --family sam2 on hiera_test at 64 px: both steps keep
    pseudo-labels and move the LoRA (resam-jax's first update has learning rate 0: two steps)."""
    size, instances = 64, 8
    jax_step = build_jax_step("hiera_test", size, "chunked", "blocks", family="sam2")
    assert jax_step.config.model.family == "sam2" and jax_step.config.model.pixel_norm == "sam"
    assert jax_step.sam.lora_start_layer == 4 and jax_step.sam.lora_targets == ("q", "v")
    state, frozen = concrete_state(jax_step)
    initial = jax.tree.map(np.array, state.lora)
    batch = synthetic_batch(size, instances)
    for _ in range(2):
        state, metrics = jax_step.step(state, frozen, batch)
    metrics = {key: float(value) for key, value in metrics.items() if np.ndim(value) == 0}
    metrics["lora_changed"] = lora_changed(initial, state.lora)
    assert_trains(metrics, "resam-jax")
    assert metrics["skipped"] == 0 and metrics["valid_instances"] >= instances // 2, metrics
    sam2 = scale_mask_logits_(torch_sam2(sam2_model_config("hiera_test", image_size=size)))
    step, notes = public_train_step(sam2, batch, lora_start_layer=4, family="sam2")
    step()
    assert_trains(notes, "PyTorch")
    assert notes["lora_changed"] and np.isfinite(notes["loss"]), notes


def test_a_step_without_pseudo_labels_is_refused():
    with pytest.raises(StepDoesNotTrain, match="valid_instances=0"):
        assert_trains({"valid_instances": 0.0, "skipped": 1.0}, "resam-jax")
    with pytest.raises(StepDoesNotTrain, match="skipped=True"):
        assert_trains({"valid_instances": 3.0, "skipped": 1.0}, "resam-jax")
    assert_trains({"valid_instances": 3}, "PyTorch")  # the PyTorch step reports no `skipped`
    with pytest.raises(StepDoesNotTrain, match="LoRA did not change"):
        assert_trains({"valid_instances": 3, "lora_changed": False}, "PyTorch")


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("RESAM_FULL_BENCHMARK_TESTS") != "1",
    reason="ViT-B benchmark steps at 1024 (4-8 minutes on two cores; every benchmark run asserts "
    "the same): set RESAM_FULL_BENCHMARK_TESTS=1",
)
def test_the_vit_b_benchmark_steps_train_at_1024():
    """What benchmarks/train_step.py and device_check.py time: ViT-B at 1024, 8 instances. Out
    of the default suite (it kept CI over its 30 minutes): the tiny steps above pin the same
    code, and each benchmark run asserts that its own steps trained."""
    metrics = jax_metrics("vit_b", 1024, 8, lora_start_layer=6)
    assert_trains(metrics, "resam-jax")
    assert_trains(torch_notes("vit_b", 8, lora_start_layer=6), "PyTorch")
