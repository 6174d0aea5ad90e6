"""Gradient accumulation (train.grad_accum_steps): k micro-batches, one update.

What is equal: with the SSA term off (method.ssa_max_weight=0), one update over a batch of k
images in k micro-batches and one update over the same k images at once have the same loss,
loss terms, gradients (hence Adam moments and LoRA) and loss window, to float32 rounding (tests/tolerances.py: the loss terms and the gradient
norm within the bound of two summation orders of a mask's pixels, the IoU term, a squared
error, within its derived bound; 1e-5 of the largest entry of each state tensor), also when the images keep different numbers of valid instances: each micro-batch counts by its
valid instances, and the focal, dice and IoU terms are means over valid instances. With SSA
on, the queues end equal (the same features pushed in the same order), but the SSA LOSS cannot
be: micro-batch m sees the queue after micro-batches 1..m, the whole batch sees it after all k,
so different entries are full, live (carrying gradient) or overwritten.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_step import IMAGE_SIZE, make_batch, make_config, make_model, train_step_of
from tolerances import reordered_sum_rtol, squared_error_atol

from resam_jax.method.instances import split_micro_batches
from resam_jax.method.train_state import create_train_state, split_model

LOSS_TERMS = ("loss", "focal", "dice", "iou")
# The widest float32 reduction in the tiny step: a mask's pixels (the focal and dice sums, the
# decoder's upscaled dot products are narrower).
STEP_RTOL = reordered_sum_rtol(IMAGE_SIZE * IMAGE_SIZE)


def assert_same_step_metrics(actual, expected, names=(*LOSS_TERMS, "grad_norm"), context=""):
    """The metrics of two orderings of one step agree within float32 bounds: the IoU term
    (a squared error of the IoU head) at squared_error_atol, the others at STEP_RTOL."""
    for name in names:
        a, e = float(actual[name]), float(expected[name])
        if name == "iou":
            count = int(expected["valid_instances"])
            atol = squared_error_atol(e, count, STEP_RTOL)
            np.testing.assert_allclose(a, e, rtol=0, atol=atol, err_msg=f"{name} {context}")
        else:
            np.testing.assert_allclose(a, e, rtol=STEP_RTOL, atol=0, err_msg=f"{name} {context}")


def uneven_batch(images: int) -> dict[str, np.ndarray]:
    """make_batch's images; image 1 keeps only its first instance, so the images have 2 and 1
    valid instances and an unweighted mean over micro-batches would differ."""
    batch = make_batch(seed=1, batch_size=images)
    batch["instance_valid"][1, 1] = False
    return batch


def one_update(mode: str, grad_accum_steps: int, batch, instance_chunk_size=None, **method):
    """One step of a fresh tiny SAM: (state, metrics); instance_chunk_size None: the default."""
    model = make_model()
    graphdef, lora, frozen = split_model(model)
    config = make_config(mode=mode, **method)
    config.train.grad_accum_steps = grad_accum_steps
    if instance_chunk_size is not None:
        config.train.instance_chunk_size = instance_chunk_size
    state = create_train_state(lora, model.config.prompt_embed_dim, config)
    return train_step_of(graphdef, config)(state, frozen, batch)


def assert_close_trees(actual, expected, rtol=1e-5):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a, e = np.asarray(a), np.asarray(e)
        scale = float(np.abs(e).max()) if e.size else 0.0
        np.testing.assert_allclose(a, e, rtol=0, atol=rtol * max(scale, 1e-30))


@pytest.mark.parametrize("mode", ["resam", "supervised"])
def test_k_micro_batches_of_one_image_equal_one_step_on_k_images(mode):
    batch = uneven_batch(images=2)
    whole, whole_metrics = one_update(mode, 1, batch, ssa_max_weight=0.0)
    accumulated, metrics = one_update(mode, 2, batch, ssa_max_weight=0.0)
    assert not bool(whole_metrics["skipped"]) and not bool(metrics["skipped"])
    assert int(metrics["valid_instances"]) == int(whole_metrics["valid_instances"]) == 3
    assert_same_step_metrics(metrics, whole_metrics)
    assert_close_trees(accumulated.opt_state, whole.opt_state)  # Adam moments: the gradients
    assert_close_trees(accumulated.lora, whole.lora)
    assert_close_trees(accumulated.loss_window, whole.loss_window)
    if mode == "resam":
        assert_close_trees(accumulated.teacher_lora, whole.teacher_lora)
        assert_close_trees(accumulated.ssa_queues, whole.ssa_queues)


def test_with_ssa_the_queues_end_equal_but_the_loss_differs():
    batch = uneven_batch(images=2)  # 3 valid instances: a queue of 4 is not yet full
    batch = {k: np.concatenate([v, v]) for k, v in batch.items()}  # 6 valid: it fills
    whole, whole_metrics = one_update("resam", 1, batch)
    accumulated, metrics = one_update("resam", 2, {k: v[[0, 2, 1, 3]] for k, v in batch.items()})
    # micro-batches {0, 1} and {2, 3} of the reordered batch are images {0, 1} and {0, 1}: the
    # queues receive the whole batch's features in its order
    assert_close_trees(accumulated.ssa_queues, whole.ssa_queues)
    assert float(whole_metrics["ssa"]) > 0
    assert abs(float(metrics["ssa"]) - float(whole_metrics["ssa"])) > 1e-4


def test_micro_batches_take_every_kth_image():
    batch = {"x": jnp.arange(6)[:, None] * jnp.ones((1, 3))}
    micro = split_micro_batches(batch, 2)["x"]
    np.testing.assert_array_equal(micro[:, :, 0], [[0, 2, 4], [1, 3, 5]])
    with pytest.raises(ValueError, match="grad_accum_steps=4"):
        split_micro_batches(batch, 4)
