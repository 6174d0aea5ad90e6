import jax.numpy as jnp
import numpy as np

from resam_jax.method.requery import mask_boxes, pseudo_labels, requery_prompts


def _reference_box(mask):
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max(), ys.max()]


def test_boxes_of_known_masks_including_empty_and_edges():
    masks = np.zeros((4, 8, 10), bool)
    masks[0, 2:5, 3:7] = True  # rows 2..4, cols 3..6
    masks[1, 7, 9] = True  # single pixel in the bottom-right corner
    masks[2, 0, 0] = True  # top-left corner and a far pixel: box spans both
    masks[2, 6, 8] = True
    boxes, nonempty = mask_boxes(jnp.asarray(masks))
    np.testing.assert_array_equal(boxes, [[3, 2, 6, 4], [9, 7, 9, 7], [0, 0, 8, 6], [0, 0, 0, 0]])
    np.testing.assert_array_equal(nonempty, [True, True, True, False])
    assert boxes.dtype == jnp.float32


def test_boxes_match_nonzero_min_max_on_random_masks():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 5, 16, 12)) > 0.97
    boxes, nonempty = mask_boxes(jnp.asarray(masks))
    for index in np.ndindex(masks.shape[:2]):
        assert nonempty[index] == masks[index].any()
        if masks[index].any():
            np.testing.assert_array_equal(boxes[index], _reference_box(masks[index]))


def test_empty_refined_masks_become_invalid_but_keep_their_slot():
    masks = np.zeros((1, 3, 6, 6), bool)
    masks[0, 0, 1:3, 1:3] = True
    masks[0, 2, 4, 4] = True
    valid = jnp.asarray([[True, True, False]])  # slot 2 was padding already
    boxes, still_valid = requery_prompts(jnp.asarray(masks), valid)
    np.testing.assert_array_equal(still_valid, [[True, False, False]])
    np.testing.assert_array_equal(boxes[0, 0], [1, 1, 2, 2])
    assert boxes.shape == (1, 3, 4)


def test_pseudo_labels_threshold_logits_at_zero():
    np.testing.assert_array_equal(
        pseudo_labels(jnp.asarray([-1.0, -1e-6, 0.0, 1e-6, 3.0])),
        [False, False, False, True, True],
    )
