"""Sample geometry: resize/pad like SAM, flips moving image, masks and boxes together, prompts."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
from data_fixtures import polygon
from pycocotools import mask as mask_utils

from resam_jax.data import photometric
from resam_jax.data.views import (
    ViewConfig,
    make_sample,
    nearest_source_indices,
    pad_offset,
    paste_masks,
    resize_rle_masks,
    sample_flip,
    stack_samples,
)
from resam_jax.transforms import preprocess_shape, resize_image

SHAPES = [(60, 90), (90, 60), (706, 1082), (800, 800), (37, 1000)]


def _image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _make(*args, **kwargs) -> dict[str, np.ndarray]:
    """make_sample as the pipeline delivers it: batched with dense masks, batch dim removed."""
    batch = paste_masks(stack_samples([make_sample(*args, **kwargs)]))
    return {key: value[0] for key, value in batch.items()}


def _instances(height: int, width: int) -> tuple[list[bytes], np.ndarray]:
    """Four objects of different shapes and sizes, including one at the image border."""
    boxes = np.float32(
        [
            [0.1 * width, 0.1 * height, 0.4 * width, 0.3 * height],
            [0.5 * width, 0.2 * height, 0.9 * width, 0.8 * height],
            [0.05 * width, 0.6 * height, 0.3 * width, height],
            [0.6 * width, 0.85 * height, 0.7 * width, 0.95 * height],
        ]
    )
    rles = [
        mask_utils.merge(
            mask_utils.frPyObjects([polygon(tuple(b), triangle=i % 2 == 1)], height, width)
        )["counts"]
        for i, b in enumerate(boxes)
    ]
    return rles, boxes


@pytest.mark.parametrize(("height", "width"), SHAPES)
@pytest.mark.parametrize("size", [1024, 64])
def test_resize_is_sam_resize_longest_side(height, width, size):
    transforms = pytest.importorskip("segment_anything.utils.transforms")
    reference = transforms.ResizeLongestSide(size)
    assert preprocess_shape(height, width, size) == reference.get_preprocess_shape(
        height, width, size
    )
    image = _image(height, width)
    np.testing.assert_array_equal(
        resize_image(image, preprocess_shape(height, width, size)), reference.apply_image(image)
    )
    rles, boxes = _instances(height, width)
    sample = _make(
        image,
        rles,
        boxes,
        0,
        config=ViewConfig(image_size=size, pad="bottom_right"),
        rng=np.random.default_rng(0),
        augment=False,
    )
    np.testing.assert_allclose(
        sample["boxes"][:4], reference.apply_boxes(boxes, (height, width)), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("source", "target"), [(706, 668), (512, 1024), (800, 1024), (1082, 1024), (7, 3)]
)
def test_nearest_source_indices_are_pil_nearest(source, target):
    column = np.arange(source, dtype=np.int32)[:, None]
    pil = np.asarray(PIL.Image.fromarray(column, mode="I").resize((1, target), PIL.Image.NEAREST))[
        :, 0
    ]
    np.testing.assert_array_equal(nearest_source_indices(source, target), pil)


@pytest.mark.parametrize(
    ("height", "width", "size"), [(706, 1082, 1024), (60, 90, 1024), (800, 800, 64)]
)
def test_mask_crops_equal_the_nearest_resize_of_the_full_mask(height, width, size):
    rles, _ = _instances(height, width)
    target = preprocess_shape(height, width, size)
    rows, cols = nearest_source_indices(height, target[0]), nearest_source_indices(width, target[1])
    for rle, crop in zip(rles, resize_rle_masks(rles, (height, width), target), strict=True):
        expected = mask_utils.decode({"size": [height, width], "counts": rle})[
            np.ix_(rows, cols)
        ].astype(bool)
        placed = np.zeros(target, bool)
        placed[
            crop.top : crop.top + crop.mask.shape[0], crop.left : crop.left + crop.mask.shape[1]
        ] = crop.mask
        np.testing.assert_array_equal(placed, expected)


def test_an_object_lost_in_the_downscale_keeps_one_pixel():
    full = np.zeros((1000, 1000), np.uint8, order="F")
    full[503, 701] = 1  # falls between the sampled rows and columns at 64 / 1000
    (crop,) = resize_rle_masks([mask_utils.encode(full)["counts"]], (1000, 1000), (64, 64))
    assert crop.mask.shape == (1, 1) and crop.mask.all()
    assert (crop.top, crop.left) == (503 * 64 // 1000, 701 * 64 // 1000)


@pytest.mark.parametrize("pad", ["center", "bottom_right"])
@pytest.mark.parametrize(("height", "width"), [(60, 90), (90, 61)])
def test_padding_is_where_the_config_says(pad, height, width):
    size = 128
    rles, boxes = _instances(height, width)
    sample = _make(
        _image(height, width),
        rles,
        boxes,
        3,
        config=ViewConfig(image_size=size, pad=pad),
        rng=np.random.default_rng(0),
        augment=True,
    )
    newh, neww = preprocess_shape(height, width, size)
    top, left = ((size - newh) // 2, (size - neww) // 2) if pad == "center" else (0, 0)
    assert tuple(sample["pad_offset"]) == (top, left) == pad_offset((newh, neww), size, pad)
    assert tuple(sample["resized_size"]) == (newh, neww) and tuple(sample["original_size"]) == (
        height,
        width,
    )
    expected_content = np.zeros((size, size), bool)
    expected_content[top : top + newh, left : left + neww] = True
    np.testing.assert_array_equal(sample["content_mask"], expected_content)
    for key in ("weak_image", "strong_image"):
        assert not sample[key][~expected_content].any()
    assert not sample["masks"][:, ~expected_content].any()
    valid = sample["instance_valid"]
    assert (sample["boxes"][valid][:, [0, 2]] >= left).all() and (
        sample["boxes"][valid][:, [0, 2]] <= left + neww
    ).all()
    assert (sample["boxes"][valid][:, [1, 3]] >= top).all() and (
        sample["boxes"][valid][:, [1, 3]] <= top + newh
    ).all()


def _flip(array: np.ndarray, horizontal: bool, vertical: bool) -> np.ndarray:
    return array[..., :: -1 if vertical else 1, :: -1 if horizontal else 1]


@pytest.mark.parametrize("pad", ["center", "bottom_right"])
def test_flips_move_image_masks_boxes_and_points_together(pad):
    height, width, size = 60, 90, 100
    image = _image(height, width)
    rles, boxes = _instances(height, width)
    config = ViewConfig(
        image_size=size, pad=pad, max_instances=6, num_points=3, strong_probability=0.0,
        negative_points="content",
    )  # fmt: skip
    plain = _make(image, rles, boxes, 0, config=config, rng=np.random.default_rng(0), augment=False)
    top, left = plain["pad_offset"]
    newh, neww = plain["resized_size"]
    content = (slice(top, top + newh), slice(left, left + neww))
    seen = set()
    for seed in range(24):
        sample = _make(
            image, rles, boxes, 0, config=config, rng=np.random.default_rng(seed), augment=True
        )
        np.testing.assert_array_equal(sample["content_mask"], plain["content_mask"])
        np.testing.assert_array_equal(
            sample["strong_image"], sample["weak_image"]
        )  # strong augs are off here
        flips = [
            (h, v)
            for h in (False, True)
            for v in (False, True)
            if np.array_equal(
                sample["weak_image"][content],
                _flip(plain["weak_image"][content].transpose(2, 0, 1), h, v).transpose(1, 2, 0),
            )
        ]
        assert len(flips) == 1
        horizontal, vertical = flips[0]
        seen.add(flips[0])
        np.testing.assert_array_equal(
            sample["masks"][(slice(None), *content)],
            _flip(plain["masks"][(slice(None), *content)], horizontal, vertical),
        )
        expected = plain["boxes"][:4] - np.float32([left, top, left, top])
        if horizontal:
            expected[:, [0, 2]] = neww - expected[:, [2, 0]]
        if vertical:
            expected[:, [1, 3]] = newh - expected[:, [3, 1]]
        np.testing.assert_allclose(
            sample["boxes"][:4], expected + np.float32([left, top, left, top]), atol=1e-4
        )
        _assert_points_follow_masks(sample, config.num_points)
    assert seen == {(False, False), (True, False), (False, True), (True, True)}


def _assert_points_follow_masks(sample, num_points, negatives_in_content=True):
    for i in np.flatnonzero(sample["instance_valid"]):
        xy = sample["points"][i].astype(int)
        labels = sample["point_labels"][i]
        np.testing.assert_array_equal(labels, [1] * num_points + [0] * num_points)
        inside_mask = sample["masks"][i][xy[:, 1], xy[:, 0]]
        assert inside_mask[:num_points].all() and not inside_mask[num_points:].any()
        in_content = sample["content_mask"][xy[:, 1], xy[:, 0]]
        assert in_content[:num_points].all()
        if negatives_in_content:
            assert in_content[num_points:].all()
        # Every mask pixel lies in its box (boxes come from the annotation, masks from the polygon).
        ys, xs = np.nonzero(sample["masks"][i])
        x0, y0, x1, y1 = sample["boxes"][i]
        assert (
            xs.min() >= np.floor(x0) - 1
            and xs.max() <= np.ceil(x1)
            and ys.min() >= np.floor(y0) - 1
            and ys.max() <= np.ceil(y1)
        )


def test_points_lie_in_their_masks_in_both_views_with_strong_augmentations():
    height, width = 90, 60
    rles, boxes = _instances(height, width)
    config = ViewConfig(
        image_size=80, max_instances=5, num_points=2, strong_probability=1.0,
        negative_points="content",
    )  # fmt: skip
    for seed in range(5):
        sample = _make(
            _image(height, width, seed),
            rles,
            boxes,
            9,
            config=config,
            rng=np.random.default_rng(seed),
            augment=True,
        )
        # One geometry for both views: the strong image differs only inside the content.
        assert not np.array_equal(sample["strong_image"], sample["weak_image"])
        assert not sample["strong_image"][~sample["content_mask"]].any()
        _assert_points_follow_masks(sample, config.num_points)


def test_padded_instance_slots_and_static_shapes():
    rles, boxes = _instances(60, 90)
    config = ViewConfig(image_size=64, max_instances=7, num_points=2)
    sample = _make(
        _image(60, 90),
        rles[:3],
        boxes[:3],
        5,
        config=config,
        rng=np.random.default_rng(1),
        augment=True,
    )
    shapes = {k: (v.shape, v.dtype) for k, v in sample.items()}
    assert shapes == {
        "weak_image": ((64, 64, 3), np.uint8),
        "strong_image": ((64, 64, 3), np.uint8),
        "content_mask": ((64, 64), bool),
        "masks": ((7, 64, 64), bool),
        "boxes": ((7, 4), np.float32),
        "points": ((7, 4, 2), np.float32),
        "point_labels": ((7, 4), np.int32),
        "instance_valid": ((7,), bool),
        "image_id": ((), np.int32),
        "original_size": ((2,), np.int32),
        "resized_size": ((2,), np.int32),
        "pad_offset": ((2,), np.int32),
    }
    np.testing.assert_array_equal(sample["instance_valid"], [True] * 3 + [False] * 4)
    assert (
        not sample["masks"][3:].any()
        and not sample["boxes"][3:].any()
        and not sample["points"][3:].any()
    )
    assert (sample["point_labels"][3:] == -1).all()
    with pytest.raises(ValueError, match="exceed max_instances=2"):
        make_sample(
            _image(60, 90),
            rles,
            boxes,
            5,
            config=ViewConfig(max_instances=2),
            rng=np.random.default_rng(0),
            augment=False,
        )


@pytest.mark.parametrize(("negative_points", "labels"), [("content", -1), ("frame", 0)])
def test_a_mask_covering_the_whole_image_has_negatives_only_in_the_padding(negative_points, labels):
    full = np.ones((20, 30), np.uint8, order="F")
    sample = _make(
        _image(20, 30),
        [mask_utils.encode(full)["counts"]],
        np.float32([[0, 0, 30, 20]]),
        1,
        config=ViewConfig(
            image_size=32, max_instances=1, num_points=2, negative_points=negative_points
        ),
        rng=np.random.default_rng(0),
        augment=False,
    )
    np.testing.assert_array_equal(sample["point_labels"][0], [1, 1, labels, labels])
    if negative_points == "frame":  # the only outside pixels are the padding
        xy = sample["points"][0, 2:].astype(int)
        assert not sample["content_mask"][xy[:, 1], xy[:, 0]].any()


@pytest.mark.parametrize("pad", ["center", "bottom_right"])
def test_frame_negatives_fall_in_the_padding_as_often_as_its_share_of_the_frame(pad):
    """The public code draws negatives over the whole padded frame: with a 60x90 image in a
    100x100 frame, a third of the frame is padding, and about a third of the negatives."""
    height, width = 60, 90
    rles, boxes = _instances(height, width)
    config = ViewConfig(
        image_size=100, pad=pad, max_instances=4, num_points=3, negative_points="frame"
    )
    in_padding, total = 0, 0
    for seed in range(60):
        sample = _make(
            _image(height, width), rles, boxes, 0, config=config,
            rng=np.random.default_rng(seed), augment=True,
        )  # fmt: skip
        _assert_points_follow_masks(sample, config.num_points, negatives_in_content=False)
        negatives = sample["points"][:4, 3:].reshape(-1, 2).astype(int)
        in_padding += int((~sample["content_mask"][negatives[:, 1], negatives[:, 0]]).sum())
        total += len(negatives)
    share = 1 - sample["content_mask"].mean()  # 0.33 of the frame
    outside_masks = 1 - sample["masks"][:4].mean(axis=(1, 2)).mean()
    assert abs(in_padding / total - share / outside_masks) < 0.05, (in_padding / total, share)


def test_strong_view_is_augmented_at_the_original_resolution_before_the_resize():
    """Public order: flip, photometric augmentations on the original image, then resize."""
    height, width = 90, 130
    image = _image(height, width, 3)
    rles, boxes = _instances(height, width)
    resized = preprocess_shape(height, width, 64)
    for before in (True, False):
        config = ViewConfig(
            image_size=64, max_instances=4, strong_probability=1.0, flip_probability=1.0,
            strong_before_resize=before, pad="bottom_right",
        )  # fmt: skip
        sample = _make(
            image, rles, boxes, 0, config=config, rng=np.random.default_rng(7), augment=True
        )
        rng = np.random.default_rng(7)
        horizontal, vertical = sample_flip(rng, 1.0)
        flip = (
            slice(None, None, -1 if vertical else 1),
            slice(None, None, -1 if horizontal else 1),
        )
        weak = np.ascontiguousarray(resize_image(image, resized)[flip])
        content = sample["weak_image"][: resized[0], : resized[1]]
        np.testing.assert_array_equal(content, weak)
        if before:
            original = np.ascontiguousarray(image[flip])
            expected = resize_image(photometric.strong_augment(original, rng, 1.0), resized)
        else:
            expected = photometric.strong_augment(weak, rng, 1.0)
        np.testing.assert_array_equal(sample["strong_image"][: resized[0], : resized[1]], expected)


def test_evaluation_samples_depend_only_on_the_seed():
    rles, boxes = _instances(60, 90)
    config = ViewConfig(image_size=64, num_points=3)
    image = _image(60, 90)
    a, b, c = (
        _make(image, rles, boxes, 0, config=config, rng=np.random.default_rng(seed), augment=False)
        for seed in (5, 5, 6)
    )
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["points"], c["points"])
    np.testing.assert_array_equal(a["strong_image"], a["weak_image"])
