"""The jitted train step on the tiny SAM and a tiny synthetic batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resam_jax.config import base_config
from resam_jax.method.train_state import create_train_state, split_model
from resam_jax.method.train_step import make_train_step
from resam_jax.models.sam import Sam, sam_config

IMAGE_SIZE = 64
NUM_INSTANCES = 3  # the last slot is padding
NUM_POINTS = 1
# A randomly initialised SAM predicts p ~ 0.5 everywhere, which Refine rejects entirely; a
# steeper mask head makes the teacher confident so that Refine and Requery have work to do.
LOGIT_SCALE = 30.0


def make_batch(seed: int, batch_size: int = 2) -> dict[str, np.ndarray]:
    """Two coloured rectangles per image on a noisy background, with points and boxes."""
    rng = np.random.default_rng(seed)
    s, n = IMAGE_SIZE, NUM_INSTANCES
    weak = rng.integers(0, 60, (batch_size, s, s, 3)).astype(np.uint8)
    masks = np.zeros((batch_size, n, s, s), bool)
    boxes = np.zeros((batch_size, n, 4), np.float32)
    points = np.zeros((batch_size, n, 2 * NUM_POINTS, 2), np.float32)
    labels = np.full((batch_size, n, 2 * NUM_POINTS), -1, np.int32)
    for b in range(batch_size):
        for k, (y0, x0) in enumerate([(4, 4), (36, 30)]):
            h, w = rng.integers(14, 26, 2)
            masks[b, k, y0 : y0 + h, x0 : x0 + w] = True
            weak[b, y0 : y0 + h, x0 : x0 + w] = rng.integers(120, 255, 3)
            boxes[b, k] = [x0, y0, x0 + w - 1, y0 + h - 1]
            ys, xs = np.nonzero(masks[b, k])
            inside = rng.integers(len(xs))
            ys_out, xs_out = np.nonzero(~masks[b, k])
            outside = rng.integers(len(xs_out))
            points[b, k] = [[xs[inside], ys[inside]], [xs_out[outside], ys_out[outside]]]
            labels[b, k] = [1, 0]
    valid = np.array([[True, True, False]] * batch_size)
    return batch_of(weak, masks, boxes, points, labels, valid)


def batch_of(weak, masks, boxes, points, labels, valid) -> dict[str, np.ndarray]:
    """The batch contract around test images [B, S, S, 3] and their instances: the strong view
    a brightened copy, a padded strip at the right (as after ResizeLongestSide), ids 0..B-1."""
    b, s = weak.shape[:2]
    strong = np.clip(weak.astype(np.int32) * 1.2 + 10, 0, 255).astype(np.uint8)
    content = np.ones((b, s, s), bool)
    content[:, :, s - 6 :] = False
    return {
        "weak_image": weak,
        "strong_image": strong,
        "content_mask": content,
        "masks": masks,
        "boxes": boxes,
        "points": points,
        "point_labels": labels,
        "instance_valid": valid,
        "image_id": np.arange(b, dtype=np.int32),
        "original_size": np.full((b, 2), s, np.int32),
        "resized_size": np.full((b, 2), s, np.int32),
        "pad_offset": np.zeros((b, 2), np.int32),
    }


def make_model() -> Sam:
    # The pixel input of make_config's base_config (model.pixel_norm).
    model = Sam(
        sam_config("tiny", image_size=IMAGE_SIZE, lora_start_layer=0),
        rngs=nnx.Rngs(0),
        pixel_norm="unit",
    )
    head = model.mask_decoder.output_hypernetworks_mlps[0].layers[-1]
    head.kernel[...] = head.kernel[...] * LOGIT_SCALE
    head.bias[...] = head.bias[...] * LOGIT_SCALE
    return model


def make_config(**method):
    config = base_config()
    config.optim.update(lr=1e-2, warmup_steps=0)
    config.method.update(ssa_queue_size=4, ema_rate=0.5)
    config.method.update(method)
    config.train.num_epochs = 2
    return config


def train_step_of(graphdef, config, steps_per_epoch=1000):
    """make_train_step jitted as the run jits it (donating the state)."""
    return jax.jit(make_train_step(graphdef, config, steps_per_epoch), donate_argnums=0)


class EncodeCounter:
    """Counts Sam.encode calls, i.e. image encodings per trace of a jitted step."""

    def __init__(self, monkeypatch):
        self.calls = 0
        original = Sam.encode

        def counting_encode(model, images):
            self.calls += 1
            return original(model, images)

        monkeypatch.setattr(Sam, "encode", counting_encode)


@pytest.fixture(scope="module")
def encode_counter():
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield EncodeCounter(monkeypatch)


@pytest.fixture(scope="module")
def resam(encode_counter):
    """(graphdef, frozen, fresh-state factory, jitted step), compiled once for the module."""
    model = make_model()
    graphdef, lora, frozen = split_model(model)
    config = make_config()
    step = train_step_of(graphdef, config)

    def fresh_state():
        return create_train_state(jax.tree.map(jnp.copy, lora), 32, config)

    return graphdef, frozen, fresh_state, step


def _copy(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_compiles_once_and_encodes_each_view_once(resam, encode_counter):
    _, frozen, fresh_state, step = resam
    state = fresh_state()
    for seed in range(3):
        state, metrics = step(state, frozen, make_batch(seed))
    # one trace: the teacher encodes the weak view once, the student the strong view once
    assert encode_counter.calls == 2
    assert int(state.step) == 3
    assert int(metrics["valid_instances"]) > 0


def _lora_paths(tree):
    return {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(tree)}


def test_only_the_lora_of_q_and_v_trains_and_the_rest_of_sam_is_unchanged(resam):
    """The trainable set is exactly LoRA A and B of q and v in the adapted blocks; after
    training, zeroing LoRA B gives SAM back bit for bit (nothing else moved), while the trained
    B does change the model."""
    graphdef, frozen, fresh_state, step = resam
    state = fresh_state()
    expected = {
        f"['image_encoder']['blocks'][{block}]['attn']['lora_{proj}']['lora_{ab}'].value"
        for block in range(2) for proj in ("q", "v") for ab in ("a", "b")
    }  # fmt: skip
    assert _lora_paths(state.lora) == expected
    assert (
        not _lora_paths(nnx.state(nnx.merge(graphdef, state.lora, frozen), nnx.LoRAParam))
        - expected
    )
    image = jnp.asarray(make_batch(0)["weak_image"][:1], jnp.float32) / 255.0
    sam_before = nnx.merge(graphdef, fresh_state().lora, frozen).encode(image)

    for _ in range(2):
        state, metrics = step(state, frozen, make_batch(0))
        assert not bool(metrics["skipped"])
    trained_b = [np.abs(np.asarray(leaf)).max() for path, leaf in
                 jax.tree_util.tree_leaves_with_path(state.lora) if "lora_b" in jax.tree_util.keystr(path)]  # fmt: skip
    assert min(trained_b) > 0  # every B moved off zero (A is random from the start)
    zero_b = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if "lora_b" in jax.tree_util.keystr(path) else x,
        state.lora,
    )
    np.testing.assert_array_equal(nnx.merge(graphdef, zero_b, frozen).encode(image), sam_before)
    adapted = nnx.merge(graphdef, state.lora, frozen).encode(image)
    assert float(jnp.abs(adapted - sam_before).max()) > 1e-4


def test_teacher_is_the_ema_of_the_student(resam):
    _, frozen, fresh_state, step = resam
    state = fresh_state()
    teacher_before = _copy(state.teacher_lora)
    state, metrics = step(state, frozen, make_batch(0))
    assert not bool(metrics["skipped"])
    expected = jax.tree.map(lambda t, s: 0.5 * t + 0.5 * s, teacher_before, _copy(state.lora))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
        expected,
        _copy(state.teacher_lora),
    )


def test_queues_fill_with_valid_instances(resam):
    _, frozen, fresh_state, step = resam
    state, metrics = step(fresh_state(), frozen, make_batch(0))
    assert int(state.ssa_queues.size) == min(int(metrics["valid_instances"]), 4)


def _skip_leaves_everything_but_step(step, frozen, state, batch, window_moves=False):
    """A skipped step changes `step` only (and the loss window, where its rule says so)."""
    before = _copy(state)
    state, metrics = step(state, frozen, batch)
    assert bool(metrics["skipped"])
    assert int(state.step) == int(before.step) + 1
    window = before.loss_window
    if window_moves:
        window = jax.tree.map(jnp.asarray, window).push(jnp.float32(metrics["loss"]))
    _assert_trees_equal(state.replace(step=before.step), before.replace(loss_window=window))


@pytest.mark.parametrize("rule", ["public", "accepted"])
def test_outlier_step_is_skipped_inside_jit(rule):
    graphdef, lora, frozen = split_model(make_model())
    # A window of 8 (factor 4): with the current loss inside the mean (public rule), a window of
    # 4 or fewer could never flag anything.
    config = make_config(outlier_rule=rule, outlier_window=8)
    state = create_train_state(lora, 32, config)
    window = state.loss_window
    for _ in range(window.capacity):  # a full window of tiny losses makes any real loss an outlier
        window = window.push(jnp.float32(1e-6))
    step = train_step_of(graphdef, config)
    state = state.replace(loss_window=window)
    # The public rule keeps the rejected loss in its window; the other leaves the window as it was.
    _skip_leaves_everything_but_step(step, frozen, state, make_batch(0), rule == "public")


def test_step_without_valid_instances_is_skipped(resam):
    _, frozen, fresh_state, step = resam
    batch = make_batch(0)
    batch["instance_valid"][:] = False
    _skip_leaves_everything_but_step(step, frozen, fresh_state(), batch)


def test_resam_steps_reduce_the_loss(resam):
    _, frozen, fresh_state, step = resam
    state = fresh_state()
    batch = make_batch(5)
    losses = []
    for _ in range(8):
        state, metrics = step(state, frozen, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.9 * losses[0], losses


def test_ssa_alone_trains_the_student():
    """With every other loss weighted 0 and no weight decay, LoRA moves only if the SSA gradient
    reaches it through the strong-view features (the public code's SSA never does)."""
    model = make_model()
    graphdef, lora, frozen = split_model(model)
    config = make_config(focal_weight=0.0, dice_weight=0.0, iou_weight=0.0, ssa_queue_size=2)
    config.optim.weight_decay = 0.0
    state = create_train_state(lora, 32, config)
    before = _copy(state.lora)
    state, metrics = train_step_of(graphdef, config)(state, frozen, make_batch(0))
    assert not bool(metrics["skipped"])
    assert float(metrics["ssa"]) > 0
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, _copy(state.lora))
    assert any(jax.tree.leaves(changed))


def test_supervised_steps_reduce_the_loss_on_gt_masks():
    graphdef, lora, frozen = split_model(make_model())
    config = make_config(mode="supervised")
    state = create_train_state(lora, 32, config)
    assert state.teacher_lora is None and state.ssa_queues is None
    step = train_step_of(graphdef, config)
    batch = make_batch(3)
    losses = []
    for _ in range(8):
        state, metrics = step(state, frozen, batch)
        losses.append(float(metrics["loss"]))
    assert int(metrics["valid_instances"]) == 4
    assert losses[-1] < 0.9 * losses[0], losses


def test_direct_mode_does_not_train():
    graphdef, lora, _ = split_model(make_model())
    with pytest.raises(ValueError, match="does not train"):
        make_train_step(graphdef, make_config(mode="direct"), steps_per_epoch=1)
    with pytest.raises(ValueError, match="does not train"):
        create_train_state(lora, 32, make_config(mode="direct"))


@pytest.mark.parametrize("requery", [True, False], ids=["requery", "refine_only"])
def test_pseudo_label_diagnostics_score_the_teacher_masks_against_gt(requery):
    """The logged IoUs against GT are those of the teacher's point masks, Refine's masks and the
    training targets: Requery's box-prompted masks, or the refined masks in the Refine-only
    ablation (method.requery=False). Checked against the stages called directly and a NumPy IoU."""
    from resam_jax.method.pseudo_labels import teacher_pseudo_labels

    graphdef, lora, frozen = split_model(make_model())
    config = make_config(requery=requery, ema_rate=0.0)
    batch = make_batch(2)
    state = create_train_state(lora, 32, config)
    teacher = nnx.merge(graphdef, jax.tree.map(jnp.copy, state.lora), frozen)
    pseudo = teacher_pseudo_labels(
        teacher,
        batch["weak_image"],
        batch["content_mask"],
        {"points": batch["points"], "point_labels": batch["point_labels"]},
        batch["instance_valid"],
        config.method.refine_threshold,
    )
    _, metrics = train_step_of(graphdef, config)(state, frozen, batch)

    def numpy_iou(masks, valid):
        masks, gt = np.asarray(masks), batch["masks"]
        scores = [
            (masks[b, i] & gt[b, i]).sum() / max((masks[b, i] | gt[b, i]).sum(), 1)
            if (masks[b, i] | gt[b, i]).any() else 1.0
            for b, i in zip(*np.nonzero(np.asarray(valid)), strict=True)
        ]  # fmt: skip
        return np.mean(scores)

    given = batch["instance_valid"]
    np.testing.assert_allclose(
        metrics["teacher_point_iou"], numpy_iou(pseudo.point_masks, given), rtol=1e-5
    )
    np.testing.assert_allclose(metrics["refined_iou"], numpy_iou(pseudo.refined, given), rtol=1e-5)
    targets = pseudo.masks if requery else pseudo.refined
    np.testing.assert_allclose(metrics["target_iou"], numpy_iou(targets, pseudo.valid), rtol=1e-5)
    assert float(metrics["refined_iou"]) != pytest.approx(
        float(numpy_iou(pseudo.masks, pseudo.valid))
    )


def test_epoch_and_ssa_weight_follow_the_step_count_inside_the_step():
    """beta(e) = 4 / (1 + exp(-(e - (E + 1) / 2))) with e derived from state.step (2 steps per
    epoch here); the step reports the gradient and update norms."""
    graphdef, lora, frozen = split_model(make_model())
    config = make_config(ssa_max_weight=4.0)
    config.train.num_epochs = 3
    state = create_train_state(lora, 32, config)
    step = train_step_of(graphdef, config, steps_per_epoch=2)
    weights = []
    for _ in range(5):
        state, metrics = step(state, frozen, make_batch(0))
        weights.append(float(metrics["ssa_weight"]))
        assert float(metrics["grad_norm"]) > 0 and float(metrics["update_norm"]) > 0
    expected = [4 / (1 + np.exp(-(e - 2))) for e in (1, 1, 2, 2, 3)]
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
