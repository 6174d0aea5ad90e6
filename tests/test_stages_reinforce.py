import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resam_jax.method.reinforce import (
    FeatureQueues,
    box_pooled_features,
    l2_normalize,
    reinforce,
    ssa_loss,
    ssa_weight,
)

STRIDE = 16
GRID = 8  # embedding side, for a 128 x 128 input


def _reference_pool(embedding_chw, box, stride=STRIDE):
    """The public code's get_bbox_feature, on one [C, H, W] map."""
    _, height, width = embedding_chw.shape
    x1, y1, x2, y2 = box
    fx1 = max(int(x1 / stride), 0)
    fy1 = max(int(y1 / stride), 0)
    fx2 = min(int((x2 + stride - 1) / stride), width)
    fy2 = min(int((y2 + stride - 1) / stride), height)
    region = embedding_chw[:, fy1:fy2, fx1:fx2]
    if region.size == 0:
        region = embedding_chw
    return region.mean(axis=(1, 2))


def test_box_pooling_matches_public_rule_including_degenerate_boxes():
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(2, GRID, GRID, 5)).astype(np.float32)
    random_boxes = np.sort(rng.integers(0, GRID * STRIDE, size=(2, 6, 2, 2)), axis=2)
    random_boxes = random_boxes.transpose(0, 1, 3, 2).reshape(2, 6, 4)[..., [0, 2, 1, 3]]
    special = np.array(
        [
            [0, 0, 0, 0],  # empty mask's zero box: empty cell range -> whole map
            [16, 16, 16, 16],  # single pixel on a cell edge: floor = ceil -> whole map
            [5, 5, 5, 5],  # single pixel inside a cell: that cell
            [0, 0, 127, 127],  # whole frame
            [100, 3, 127, 20],  # touches the right border
            [17, 33, 47, 63],
        ],
        np.float32,
    )
    boxes = np.concatenate([random_boxes.astype(np.float32), special[None].repeat(2, 0)], axis=1)
    got = box_pooled_features(jnp.asarray(embedding), jnp.asarray(boxes), STRIDE)
    for b in range(2):
        for n in range(boxes.shape[1]):
            expected = _reference_pool(embedding[b].transpose(2, 0, 1), boxes[b, n])
            np.testing.assert_allclose(got[b, n], expected, rtol=1e-5, atol=1e-6)


def test_push_matches_a_bounded_deque():
    capacity, dim = 5, 3
    rng = np.random.default_rng(1)
    queues = FeatureQueues.empty(capacity, dim)
    reference = collections.deque(maxlen=capacity)
    for rows in (2, 0, 4, 9, 3):  # 9 > capacity: only the last 5 valid rows survive
        weak = rng.normal(size=(max(rows, 1) + 2, dim)).astype(np.float32)
        strong = rng.normal(size=weak.shape).astype(np.float32)
        valid = np.zeros(len(weak), bool)
        valid[rng.permutation(len(weak))[:rows]] = True
        queues = queues.push(jnp.asarray(weak), jnp.asarray(strong), jnp.asarray(valid))
        reference.extend(zip(weak[valid], strong[valid], strict=True))

        size = int(queues.size)
        assert size == len(reference)
        # slots fill from 0 before the first wrap-around, so the first `size` rows are the entries
        got_pairs = sorted(
            (tuple(w), tuple(s))
            for w, s in zip(
                np.asarray(queues.weak)[:size], np.asarray(queues.strong)[:size], strict=True
            )
        )
        want_pairs = sorted((tuple(w), tuple(s)) for w, s in reference)
        assert got_pairs == want_pairs


def _reference_matched(strong, weak):
    return np.mean(
        [
            1 - s @ w / np.linalg.norm(s) / np.linalg.norm(w)
            for s, w in zip(strong, weak, strict=True)
        ]
    )


def _reference_softmax(strong, weak, tau):
    strong = strong / np.linalg.norm(strong, axis=1, keepdims=True)
    weak = weak / np.linalg.norm(weak, axis=1, keepdims=True)
    q = len(strong)
    total = 0.0
    for i in range(q):
        sims = np.array([0.0 if j == i else strong[i] @ weak[j] for j in range(q)])
        weights = np.exp(sims / tau) / np.exp(sims / tau).sum()
        total += sum((1 - sims[j]) * weights[j] for j in range(q) if j != i)
    return total / q


def _full_queues(rng, capacity=6, dim=4):
    weak = rng.normal(size=(capacity, dim)).astype(np.float32)
    strong = rng.normal(size=(capacity, dim)).astype(np.float32)
    queues = FeatureQueues.empty(capacity, dim).push(
        l2_normalize(jnp.asarray(weak)), l2_normalize(jnp.asarray(strong)), jnp.ones(capacity, bool)
    )
    return queues, weak, strong


def test_matched_loss_equals_mean_one_minus_cosine():
    queues, weak, strong = _full_queues(np.random.default_rng(2))
    np.testing.assert_allclose(
        ssa_loss(queues, "matched", tau=0.05), _reference_matched(strong, weak), rtol=1e-5
    )


@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_softmax_loss_equals_the_paper_formula(tau):
    queues, weak, strong = _full_queues(np.random.default_rng(3))
    np.testing.assert_allclose(
        ssa_loss(queues, "softmax", tau=tau), _reference_softmax(strong, weak, tau), rtol=1e-4
    )


@pytest.mark.parametrize("form", ["matched", "softmax"])
def test_loss_is_zero_until_the_queues_are_full(form):
    rng = np.random.default_rng(4)
    queues = FeatureQueues.empty(6, 4).push(
        jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
        jnp.asarray(rng.normal(size=(5, 4)), jnp.float32),
        jnp.ones(5, bool),
    )
    assert float(ssa_loss(queues, form, tau=0.05)) == 0.0


def test_unknown_form_is_an_error():
    queues, _, _ = _full_queues(np.random.default_rng(5))
    with pytest.raises(ValueError, match="unknown SSA form"):
        ssa_loss(queues, "cosine", tau=0.05)


@pytest.mark.parametrize("form", ["matched", "softmax"])
def test_gradient_reaches_the_strong_view_only(form):
    rng = np.random.default_rng(6)
    previous, _, _ = _full_queues(rng, capacity=6, dim=4)
    weak_embedding = jnp.asarray(rng.normal(size=(1, GRID, GRID, 4)), jnp.float32)
    strong_embedding = jnp.asarray(rng.normal(size=(1, GRID, GRID, 4)), jnp.float32)
    boxes = jnp.asarray([[[0, 0, 40, 40], [50, 60, 120, 127], [0, 0, 0, 0]]], jnp.float32)
    valid = jnp.asarray([[True, True, False]])

    def loss(weak_embedding, strong_embedding):
        value, _ = reinforce(
            previous, weak_embedding, strong_embedding, boxes, valid, STRIDE, form, tau=0.05
        )
        return value

    weak_grad, strong_grad = jax.grad(loss, argnums=(0, 1))(weak_embedding, strong_embedding)
    assert float(jnp.abs(strong_grad).max()) > 0
    assert float(jnp.abs(weak_grad).max()) == 0.0
    # the strong gradient comes only through the cells inside the valid boxes
    assert float(jnp.abs(strong_grad[0, 5:, :3]).max()) == 0.0


def test_reinforce_pushes_the_valid_instances_of_every_image():
    rng = np.random.default_rng(7)
    weak_embedding = jnp.asarray(rng.normal(size=(2, GRID, GRID, 4)), jnp.float32)
    strong_embedding = jnp.asarray(rng.normal(size=(2, GRID, GRID, 4)), jnp.float32)
    boxes = jnp.asarray(rng.integers(0, 64, size=(2, 3, 4)), jnp.float32)
    valid = jnp.asarray([[True, False, True], [False, False, True]])
    _, queues = reinforce(
        FeatureQueues.empty(8, 4),
        weak_embedding,
        strong_embedding,
        boxes,
        valid,
        STRIDE,
        "matched",
        tau=0.05,
    )
    assert int(queues.size) == 3
    expected = l2_normalize(box_pooled_features(weak_embedding, boxes, STRIDE))
    np.testing.assert_allclose(queues.weak[:3], expected[valid], rtol=1e-6)


def test_ssa_weight_is_the_public_sigmoid_ramp():
    for epoch in range(1, 11):
        want = 4 / (1 + np.exp(-(epoch - (10 + 1) / 2)))
        np.testing.assert_allclose(ssa_weight(jnp.int32(epoch), 10, 4.0), want, rtol=1e-6)
