"""Per-device batch > 1 with 50 instance slots per image (issue 11, "scale").

One ReSAM step (tiny SAM, 64 x 64) on a global batch of 4 images with 50 instance slots each
(50, 37, 12 and 0 of them given, the rest padding), sharded over a ("data",) mesh of 2 devices
(per-device batch 2), jitted with the run's shardings. It must equal
  - the same step on one device (to float32 rounding), and
  - gradient accumulation over the 4 single images (train.grad_accum_steps=4 on one device),
    which by construction weights each image by its valid instances: the loss terms are means
    over ALL valid instances of the batch (tests/test_grad_accumulation.py).
With single-image micro-batches nothing can mix instance slots across images or normalise per
image, so a whole-batch step that does (a wrong [B, N] <-> [B * N] reshape, the overlap removal
of Refine summed over the wrong axis, a loss averaged per image) differs from it.

The SSA queue (256 slots) is larger than the batch's surviving instances, so the SSA loss is
0 in every run and the runs' losses are comparable; the queues must still end equal (the same
features, pushed in the same order). The 2-device runs need their own process
(--xla_force_host_platform_device_count), as in tests/test_parallel.py.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from test_train_step import IMAGE_SIZE, batch_of

REPO = Path(__file__).resolve().parents[1]
SLOTS = 50
GIVEN = (50, 37, 12, 0)  # instances given per image; the other slots are padding
QUEUE_SIZE = 256  # > the valid instances of the batch: the queue never fills, SSA loss stays 0
STATE_FIELDS = ("lora", "opt_state", "teacher_lora", "ssa_queues", "loss_window")
LOSS_TERMS = ("loss", "focal", "dice", "iou", "ssa")


def crowded_batch(given=GIVEN, slots=SLOTS, seed=0, size=IMAGE_SIZE) -> dict[str, np.ndarray]:
    """Small bright rectangles (3-8 px, overlapping at will) on a noisy background, one per
    given slot, each with one positive point inside and one negative point outside it."""
    rng = np.random.default_rng(seed)
    b = len(given)
    weak = rng.integers(0, 60, (b, size, size, 3)).astype(np.uint8)
    masks = np.zeros((b, slots, size, size), bool)
    boxes = np.zeros((b, slots, 4), np.float32)
    points = np.zeros((b, slots, 2, 2), np.float32)
    labels = np.full((b, slots, 2), -1, np.int32)
    valid = np.zeros((b, slots), bool)
    for i, count in enumerate(given):
        for k in range(count):
            h, w = rng.integers(3, 9, 2)
            y0, x0 = rng.integers(0, size - h), rng.integers(0, size - 6 - w)
            masks[i, k, y0 : y0 + h, x0 : x0 + w] = True
            weak[i, y0 : y0 + h, x0 : x0 + w] = rng.integers(120, 255, 3)
            boxes[i, k] = [x0, y0, x0 + w - 1, y0 + h - 1]
            ys, xs = np.nonzero(masks[i, k])
            ys_out, xs_out = np.nonzero(~masks[i, k])
            inside, outside = rng.integers(len(xs)), rng.integers(len(xs_out))
            points[i, k] = [[xs[inside], ys[inside]], [xs_out[outside], ys_out[outside]]]
            labels[i, k] = [1, 0]
            valid[i, k] = True
    return batch_of(weak, masks, boxes, points, labels, valid)


# Runs the step three ways and saves metrics and final states: "sharded" (2 devices, per-device
# batch 2), "single" (the same step on one device), "accumulated" (k=4 micro-batches of one
# image, one device); and the teacher's per-image pseudo-label counts.
WORKER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "tests")
    import jax, jax.numpy as jnp, numpy as np
    from test_batch_scaling import QUEUE_SIZE, STATE_FIELDS, crowded_batch
    from test_train_step import make_config, make_model
    from resam_jax import parallel
    from resam_jax.method.train_state import create_train_state, split_model
    from resam_jax.method.pseudo_labels import teacher_pseudo_labels
    from resam_jax.method.train_step import make_train_step

    assert jax.device_count() == 2, jax.devices()
    out = sys.argv[1]
    model = make_model()
    graphdef, lora, frozen = split_model(model)
    batch = crowded_batch()
    results = {}

    def run(name, grad_accum_steps, mesh=None):
        config = make_config(ssa_queue_size=QUEUE_SIZE)
        config.train.grad_accum_steps = grad_accum_steps
        state = create_train_state(jax.tree.map(jnp.copy, lora), 32, config)
        step = make_train_step(graphdef, config, steps_per_epoch=1000)
        if mesh is None:
            new_state, metrics = jax.jit(step, donate_argnums=0)(state, frozen, batch)
        else:
            rep, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
            placed = parallel.global_batch(batch, mesh)
            shards = {s.data.shape[0] for s in placed["points"].addressable_shards}
            assert shards == {2}, shards  # per-device batch 2
            jitted = jax.jit(step, in_shardings=(rep, rep, sharded), out_shardings=(rep, rep),
                             donate_argnums=0)
            new_state, metrics = jitted(
                parallel.replicate(state, mesh), parallel.replicate(frozen, mesh), placed
            )
        for key, value in metrics.items():
            results[f"{name}/metrics/{key}"] = np.asarray(value)
        for field in STATE_FIELDS:
            leaves = jax.tree_util.tree_leaves_with_path(getattr(new_state, field))
            for path, leaf in leaves:
                results[f"{name}/{field}{jax.tree_util.keystr(path)}"] = np.asarray(leaf)

    run("sharded", 1, parallel.data_mesh())
    run("single", 1)
    run("accumulated", 4)

    prompts = {"points": batch["points"], "point_labels": batch["point_labels"]}
    pseudo = jax.jit(lambda w, c, p, v: teacher_pseudo_labels(model, w, c, p, v, 0.3))(
        batch["weak_image"], batch["content_mask"], prompts, batch["instance_valid"]
    )
    results["pseudo_valid"] = np.asarray(pseudo.valid)
    np.savez(out, **results)
    """
)


def _run_worker(out: Path) -> dict[str, np.ndarray]:
    environment = {**os.environ, "JAX_PLATFORMS": "cpu"}
    environment["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(out)],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    with np.load(out) as f:
        return {name: f[name] for name in f.files}


def _run(results, name: str) -> dict[str, np.ndarray]:
    prefix = f"{name}/"
    return {k[len(prefix) :]: v for k, v in results.items() if k.startswith(prefix)}


def _assert_same_run(actual, expected, what: str, rtol: float, iou_rtol: float | None = None):
    """Equal to `rtol`; the IoU term to `iou_rtol` (default `rtol`): its target binarises the
    logits, so a logit within float rounding of the threshold flips a pixel between programs
    of different shapes."""
    assert actual.keys() == expected.keys()
    for key in expected:
        a, e = actual[key].astype(np.float64), expected[key].astype(np.float64)
        if key.startswith("metrics/"):
            name = key[len("metrics/") :]
            if name in (*LOSS_TERMS, "grad_norm", "valid_instances"):
                tolerance = iou_rtol if name == "iou" and iou_rtol is not None else rtol
                np.testing.assert_allclose(
                    a, e, rtol=tolerance, atol=1e-7, err_msg=f"{what}: {key}"
                )
        else:  # a state tensor: to rtol of its largest entry
            scale = float(np.abs(e).max()) if e.size else 0.0
            np.testing.assert_allclose(
                a, e, rtol=0, atol=rtol * max(scale, 1e-30), err_msg=f"{what}: {key}"
            )


def test_per_device_batch_of_two_with_fifty_instances_per_image(tmp_path):
    results = _run_worker(tmp_path / "runs.npz")
    sharded, single = _run(results, "sharded"), _run(results, "single")
    accumulated = _run(results, "accumulated")

    # The batch really is crowded: every image with given instances keeps pseudo-labels, the
    # counts differ, and slots past the second image's 37 are used in the first image.
    kept = results["pseudo_valid"].sum(axis=1)
    assert kept[0] > kept[1] > kept[2] > kept[3] == 0, kept
    assert results["pseudo_valid"][0, 37:].any()
    for run in (sharded, single, accumulated):
        assert not bool(run["metrics/skipped"])
        assert int(run["metrics/valid_instances"]) == kept.sum()
        assert float(run["metrics/ssa"]) == 0.0
        assert float(run["metrics/loss"]) > 0 and float(run["metrics/grad_norm"]) > 0

    # Float32 rounding differs between the sharded and the single-device program; the IoU
    # term's target binarises the logits, so it moves most (5e-5 relative measured).
    _assert_same_run(sharded, single, "2 devices vs 1 device", rtol=2e-4)
    # The loss is a mean over all valid instances of the batch: accumulation over the single
    # images, each weighted by its valid instances, gives the same update. The decoder runs on
    # [4, 8] and [1, 8] instance chunks there (train.instance_chunk_size), whose gradients the
    # backward scan sums in a different order: Adam's second moments differ by up to 1.01e-5
    # of their largest entry (measured), and one flipped pixel in the IoU term's target moved
    # it 5e-5 relative.
    _assert_same_run(
        single, accumulated, "whole batch vs 4 single images", rtol=2e-5, iou_rtol=2e-4
    )
