"""Native-resolution tiles (data.tile_size): the grid covers the image, every instance is in
exactly one tile that holds it whole, tile samples are crops of the image at its own
resolution, and a tile holding the whole image gives exactly the untiled pipeline's samples;
a corrupted scene is corrupted once and its tiles cut from it."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from data_fixtures import nwpu_release
from pycocotools import mask as mask_utils

from resam_jax.data import pipeline
from resam_jax.data.builders import load_prepared
from resam_jax.data.pipeline import DataConfig, make_dataset
from resam_jax.data.prepare import prepare
from resam_jax.data.tiles import TileSummary, default_stride, tile_image, window_starts


@pytest.mark.parametrize("length", [50, 384, 385, 640, 700, 1000])
def test_windows_cover_each_side_and_end_flush(length):
    tile, stride = 384, default_stride(384)
    starts = window_starts(length, tile, stride)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] == max(length - tile, 0)
    assert all(b - a <= stride for a, b in zip(starts, starts[1:]))
    covered = np.zeros(length, bool)
    for start in starts:
        covered[start : start + tile] = True
    assert covered.all()


def _holds(window, box):
    top, left, height, width = window
    x0, y0, x1, y1 = box
    return left <= x0 and top <= y0 and x1 <= left + width and y1 <= top + height


def test_every_instance_is_in_exactly_one_tile_that_holds_it_whole():
    rng = np.random.default_rng(0)
    height, width, tile = 700, 900, 384
    xy = rng.uniform(0, [width - 20, height - 20], size=(60, 2))
    sides = rng.uniform(5, 150, size=(60, 2))
    boxes = np.concatenate([xy, np.minimum(xy + sides, [width, height])], axis=1)
    # one box longer than a tile, one that fits a tile but straddles every overlap
    boxes = np.concatenate([boxes, [[100, 50, 620, 300], [200, 10, 500, 60]]])
    tiles, summary = tile_image(7, height, width, boxes, tile, default_stride(tile))
    placed = sorted(i for t in tiles for i in t.instances)
    assert placed == list(range(len(boxes)))
    for t in tiles:
        assert t.record == 7 and t.instances
        top, left, h, w = t.window
        assert 0 <= top and 0 <= left and top + h <= height and left + w <= width
        assert all(_holds(t.window, boxes[i]) for i in t.instances)
    assert summary.instances == len(boxes) and summary.images == 1
    assert summary.grid_tiles + summary.extra_tiles + summary.oversized == len(tiles)
    assert summary.oversized == 1 and summary.extra_tiles >= 1
    (oversized,) = [t for t in tiles if max(t.window[2:]) > tile]
    assert oversized.instances == (len(boxes) - 2,) and oversized.window[2:] == (520, 520)
    straddling = [t for t in tiles if len(boxes) - 1 in t.instances][0]
    assert straddling.window[2:] == (tile, tile)  # its own window, native resolution


def test_an_instance_goes_to_the_window_most_centred_on_it():
    # windows start at 0 and 256 along x (stride 256): a box at x 300..360 is held by both,
    # with margin 24 in the first (384 - 360) and 44 in the second (300 - 256).
    tiles, _ = tile_image(0, 384, 640, [[300, 150, 360, 200]], 384, 256)
    assert [t.window for t in tiles] == [(0, 256, 384, 384)]
    tiles, _ = tile_image(0, 384, 640, [[270, 150, 330, 200]], 384, 256)
    assert [t.window for t in tiles] == [(0, 0, 384, 384)]


def test_summaries_add_up():
    a = TileSummary(1, 3, 2, 1, 0)
    assert a + TileSummary(2, 5, 3, 0, 1) == TileSummary(3, 8, 5, 1, 1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiles")
    prepare("nwpu_vhr10", manual_dir=nwpu_release(root / "release"), data_dir=root / "tfds")
    return root / "tfds"


def _config(data_dir, **overrides) -> DataConfig:
    values = dict(
        data_dir=str(data_dir), image_size=32, max_instances=2, num_points=2, host_batch_size=2,
        read_threads=1, prefetch_batches=1, pad="bottom_right", tile_size=32,
    )  # fmt: skip
    return DataConfig(**{**values, **overrides})


def _samples(config, split, *, train, seed=0):
    dataset = make_dataset(config, split, train=train, seed=seed, shard_index=0, shard_count=1)
    samples = []
    for batch in dataset:
        samples += [{k: v[i] for k, v in batch.items()} for i in range(len(batch["image_id"]))]
        if train and len(samples) >= 12:
            break
    return samples


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_tiled_pass_scores_every_instance_once(data_dir, split):
    config = _config(data_dir)
    meta = load_prepared(data_dir, "nwpu_vhr10", "default").info.metadata["splits"][split]
    total = sum(meta["num_instances"])
    summary = pipeline.tile_summary(config, split)
    assert summary.instances == total and summary.images == len(meta["image_ids"])
    samples = _samples(config, split, train=False)
    assert sum(int(s["instance_valid"].sum()) for s in samples) == total
    if split == "train":  # image 3's object (25 x 40 px) is longer than a 32 px tile
        assert summary.oversized == 1


def test_tile_samples_are_the_image_and_its_masks_at_native_resolution(data_dir):
    config = _config(data_dir)
    table = pipeline.split_tile_table(config, "train")
    rows = pipeline.host_samples(config, "train", train=False, shard_index=0, shard_count=1)
    source = load_prepared(data_dir, "nwpu_vhr10", "default").as_data_source("train")
    samples = _samples(config, "train", train=False)
    checked = 0
    for (unit, first), sample in zip(rows, samples, strict=True):
        if unit < 0:
            continue
        tile = table[unit]
        top, left, height, width = tile.window
        if max(height, width) > config.tile_size:
            continue  # the oversized window is shrunk to the input like a whole image
        example = source[tile.record]
        assert int(sample["image_id"]) == int(example["image_id"])
        np.testing.assert_array_equal(
            sample["weak_image"][:height, :width],
            example["image"][top : top + height, left : left + width],
        )
        size = example["image"].shape[:2]
        chosen = tile.instances[first : first + config.max_instances]
        for slot, i in enumerate(chosen):
            full = mask_utils.decode({"size": list(size), "counts": example["instances"]["mask_rle"][i]})  # fmt: skip
            np.testing.assert_array_equal(
                sample["masks"][slot, :height, :width],
                full[top : top + height, left : left + width].astype(bool),
            )
            want = example["instances"]["bbox"][i] - np.float32([left, top, left, top])
            np.testing.assert_allclose(sample["boxes"][slot], want)
        checked += 1
    assert checked >= 5


@pytest.mark.parametrize("train", [False, True])
def test_one_tile_per_image_gives_the_untiled_samples(data_dir, train):
    # Tiles of 128 px hold every fixture image (at most 96 px) whole: the same samples, the
    # same points and augmentations, as without tiles.
    untiled = _samples(_config(data_dir, image_size=64, tile_size=0), "train", train=train)
    tiled = _samples(_config(data_dir, image_size=64, tile_size=128), "train", train=train)
    assert len(tiled) == len(untiled)
    for a, b in zip(tiled, untiled):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("train", [False, True])
def test_a_corrupted_scene_is_corrupted_once_and_its_tiles_are_cut_from_it(
    data_dir, monkeypatch, train
):
    # The kept corrupted image gives exactly the samples of corrupting it again for every tile,
    # with one corruption per image instead of one per tile (per epoch and prompt draw).
    calls = []
    corrupt = pipeline.corruptions.corrupt

    def counted(image, name, severity, image_id):
        calls.append(image_id)
        return corrupt(image, name, severity, image_id)

    monkeypatch.setattr(pipeline.corruptions, "corrupt", counted)
    pipeline._shared_image_cache.cache_clear()  # kept images outlive a dataset, not this test
    shifted = dict(corruption="zoom_blur", corruption_severity=2)
    kept = _samples(_config(data_dir, **shifted), "train", train=train)
    kept_calls, calls[:] = list(calls), []
    again = _samples(_config(data_dir, **shifted, corruption_cache_mb=0), "train", train=train)
    clean = _samples(_config(data_dir), "train", train=train)
    assert len(kept) == len(again) == len(clean)
    for a, b in zip(kept, again, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    tiles_seen = [int(s["image_id"]) for s in again if int(s["image_id"]) >= 0]
    assert len(calls) >= len(tiles_seen) > len(set(tiles_seen))  # images of several tiles
    assert sorted(kept_calls) == sorted(set(kept_calls)) and set(kept_calls) >= set(tiles_seen)
    assert any(not np.array_equal(a["weak_image"], c["weak_image"]) for a, c in zip(kept, clean))
    # Another dataset of the split (the next prompt draw, the next row) finds them kept.
    calls[:] = []
    assert len(_samples(_config(data_dir, **shifted), "train", train=train, seed=1)) == len(kept)
    assert calls == []


def test_the_corruption_cache_is_bounded_and_least_recently_used_goes_first():
    cache = pipeline._ImageCache(max_bytes=300)
    for key in "abc":
        cache.put(key, np.zeros(100, np.uint8))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", np.zeros(100, np.uint8))
    assert cache.get("b") is None and all(cache.get(k) is not None for k in "acd")
    cache.put("e", np.zeros(301, np.uint8))  # larger than the whole cache: not kept
    assert cache.get("e") is None and len(cache) == 3
    # Shipped to a grain worker, a loader's cache arrives empty (its lock and arrays stay here).
    shipped = pickle.loads(pickle.dumps(cache))
    assert shipped.max_bytes == 300 and len(shipped) == 0 and len(cache) == 3


def test_tile_fields_are_checked():
    with pytest.raises(ValueError, match="tile_size must be >= 0"):
        DataConfig(tile_size=-1)
    with pytest.raises(ValueError, match="tile_stride must be in 0..tile_size=32"):
        DataConfig(tile_size=32, tile_stride=40)
    with pytest.raises(ValueError, match="corruption_cache_mb must be >= 0"):
        DataConfig(corruption_cache_mb=-1)
