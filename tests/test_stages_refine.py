import jax.numpy as jnp
import numpy as np
import pytest

from resam_jax.method.refine import entropy_confidence, refine_masks, remove_overlaps

BIG = 20.0  # a logit whose confidence is ~1


def _logit(p):
    return float(np.log(p / (1 - p)))


@pytest.mark.parametrize("p", [0.05, 0.5, 0.6, 0.9, 0.999])
def test_entropy_confidence_is_p_times_one_minus_entropy_in_nats(p):
    entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    got = entropy_confidence(jnp.asarray(_logit(p), jnp.float32))
    np.testing.assert_allclose(got, p * (1 - entropy), rtol=1e-5)


def test_threshold_keeps_confident_foreground_only():
    # p=0.6: H=0.673 nats, p(1-H)=0.196 -> dropped; p=0.9: p(1-H)=0.607 -> kept;
    # (with normalised entropy p=0.6 would score 0.175 and p=0.9 0.479: same decisions,
    # so also check p=0.75: 0.75(1-0.562)=0.328 kept in nats, 0.75(1-0.811)=0.142 if normalised).
    logits = jnp.asarray([[[[_logit(0.6), _logit(0.9), _logit(0.75), -BIG]]]], jnp.float32)
    refined, _ = refine_masks(logits, jnp.ones((1, 1), bool), threshold=0.3)
    np.testing.assert_array_equal(refined[0, 0, 0], [False, True, True, False])


def test_overlap_removal_on_hand_made_masks():
    a = np.zeros((5, 6), bool)
    a[0:3, 0:4] = True  # 12 px
    b = np.zeros((5, 6), bool)
    b[2:5, 2:6] = True  # 12 px; overlaps a on rows 2, cols 2..3 (2 px)
    c = np.zeros((5, 6), bool)
    c[4, 0] = True  # 1 px, overlaps nobody
    everything = np.ones((5, 6), bool)  # invalid slot: must neither claim nor keep pixels
    masks = jnp.asarray(np.stack([a, b, c, everything])[None])
    valid = jnp.asarray([[True, True, True, False]])

    kept, removed_fraction = remove_overlaps(masks, valid)

    expected_a = a.copy()
    expected_a[2, 2:4] = False
    expected_b = b.copy()
    expected_b[2, 2:4] = False
    np.testing.assert_array_equal(kept[0, 0], expected_a)
    np.testing.assert_array_equal(kept[0, 1], expected_b)
    np.testing.assert_array_equal(kept[0, 2], c)
    assert not kept[0, 3].any()
    # 4 instance-pixels removed (2 from a, 2 from b) out of 12 + 12 + 1 claimed
    np.testing.assert_allclose(removed_fraction, [4 / 25])


def test_overlap_is_per_image_and_three_way_overlaps_vanish():
    masks = np.zeros((2, 3, 4, 4), bool)
    masks[0, :, 1, 1] = True  # claimed by all three instances of image 0
    masks[0, 0, 0, 0] = True
    masks[1, 0, 1, 1] = True  # the same pixel in image 1 has a single owner
    kept, removed_fraction = remove_overlaps(jnp.asarray(masks), jnp.ones((2, 3), bool))
    assert not kept[0, :, 1, 1].any()
    assert kept[0, 0, 0, 0]
    assert kept[1, 0, 1, 1]
    np.testing.assert_allclose(removed_fraction, [3 / 4, 0.0])


def test_empty_image_reports_zero_removed_fraction():
    _, removed_fraction = remove_overlaps(jnp.zeros((1, 2, 3, 3), bool), jnp.ones((1, 2), bool))
    np.testing.assert_array_equal(removed_fraction, [0.0])
