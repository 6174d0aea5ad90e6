"""make_dataset on synthetic builds: batch contract, chunking, determinism, sharding, workers."""

from __future__ import annotations

import collections
import json
import shutil

import ml_collections
import numpy as np
import pytest
from data_fixtures import hrsid_release, nwpu_release, whu_release

from resam_jax.data import pipeline
from resam_jax.data.coco import DataError
from resam_jax.data.pipeline import (
    DataConfig,
    chunk_index,
    host_samples,
    make_dataset,
    steps_per_epoch,
)
from resam_jax.data.prepare import prepare


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Synthetic NWPU, WHU and HRSID inshore, built once for the module."""
    root = tmp_path_factory.mktemp("pipeline")
    prepare("nwpu_vhr10", manual_dir=nwpu_release(root / "release"), data_dir=root / "tfds")
    prepare("whu_building", manual_dir=whu_release(root / "release"), data_dir=root / "tfds")
    prepare(
        "hrsid",
        config="inshore",
        manual_dir=hrsid_release(root / "release"),
        data_dir=root / "tfds",
    )
    return root / "tfds"


def _config(data_dir, **overrides) -> DataConfig:
    values = dict(
        dataset="nwpu_vhr10",
        data_dir=str(data_dir),
        image_size=64,
        max_instances=3,
        num_points=2,
        host_batch_size=2,
        read_threads=1,
        prefetch_batches=1,
    )
    return DataConfig(**{**values, **overrides})


def _batches(config, split, *, train, seed=0, shard_index=0, shard_count=1, limit=None):
    dataset = make_dataset(
        config, split, train=train, seed=seed, shard_index=shard_index, shard_count=shard_count
    )
    batches = []
    for batch in dataset:
        batches.append(batch)
        if limit is not None and len(batches) == limit:
            break
    return batches


def _samples(batches):
    return [
        {k: v[i] for k, v in batch.items()}
        for batch in batches
        for i in range(len(batch["image_id"]))
    ]


@pytest.mark.parametrize(
    ("dataset", "dataset_config", "split"),
    [
        ("nwpu_vhr10", "default", "train"),
        ("whu_building", "default", "val"),
        ("hrsid", "inshore", "test"),
    ],
)
@pytest.mark.parametrize("train", [True, False])
def test_batches_have_the_contract_shapes_for_every_dataset(
    data_dir, dataset, dataset_config, split, train
):
    config = _config(
        data_dir, dataset=dataset, dataset_config=dataset_config, image_size=48, max_instances=4
    )
    expected = {
        "weak_image": ((2, 48, 48, 3), np.uint8),
        "strong_image": ((2, 48, 48, 3), np.uint8),
        "content_mask": ((2, 48, 48), np.bool_),
        "masks": ((2, 4, 48, 48), np.bool_),
        "boxes": ((2, 4, 4), np.float32),
        "points": ((2, 4, 4, 2), np.float32),
        "point_labels": ((2, 4, 4), np.int32),
        "instance_valid": ((2, 4), np.bool_),
        "image_id": ((2,), np.int32),
        "original_size": ((2, 2), np.int32),
        "resized_size": ((2, 2), np.int32),
        "pad_offset": ((2, 2), np.int32),
    }
    batches = _batches(config, split, train=train, limit=3)
    assert batches
    for batch in batches:
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == expected


def test_chunk_index_covers_every_instance_once():
    np.testing.assert_array_equal(
        chunk_index([2, 7, 3], 3), [[0, 0], [1, 0], [1, 3], [1, 6], [2, 0]]
    )
    assert chunk_index([], 3).shape == (0, 2)


def test_every_instance_is_used_once_per_epoch(data_dir):
    config = _config(data_dir)  # image 2 has 7 instances: chunks of 3, 3, 1
    samples = [s for s in _samples(_batches(config, "train", train=False)) if s["image_id"] >= 0]
    per_image = collections.Counter()
    for sample in samples:
        per_image[int(sample["image_id"])] += int(sample["instance_valid"].sum())
    assert per_image == {1: 2, 2: 7, 3: 1, 4: 3}
    assert sum(int(s["image_id"]) == 2 for s in samples) == 3
    # The chunks of one image hold different instances.
    boxes = [
        tuple(b) for s in samples if s["image_id"] == 2 for b in s["boxes"][s["instance_valid"]]
    ]
    assert len(set(boxes)) == 7

    train = _samples(
        _batches(config, "train", train=True, limit=3)
    )  # 6 samples = one epoch, shuffled
    assert sorted(int(s["instance_valid"].sum()) for s in train) == sorted(
        int(s["instance_valid"].sum()) for s in samples
    )


def test_evaluation_is_deterministic_and_pads_the_last_batch(data_dir):
    config = _config(data_dir, host_batch_size=4)
    first, again = _batches(config, "val", train=False), _batches(config, "val", train=False)
    other_seed = _batches(config, "val", train=False, seed=1)
    assert len(first) == 1  # two val images -> one batch of 4 with two empty samples
    for key in first[0]:
        np.testing.assert_array_equal(first[0][key], again[0][key])
    assert not np.array_equal(first[0]["points"], other_seed[0]["points"])
    np.testing.assert_array_equal(first[0]["image_id"], [5, 6, -1, -1])
    assert not first[0]["instance_valid"][2:].any() and not first[0]["content_mask"][2:].any()
    np.testing.assert_array_equal(first[0]["strong_image"], first[0]["weak_image"])
    assert steps_per_epoch(config, "val", train=False, shard_index=0, shard_count=1) == 1


def test_evaluation_prompts_do_not_depend_on_the_number_of_hosts(data_dir):
    config = _config(data_dir, host_batch_size=1)

    def key(sample):  # (image, chunk): the first box tells the chunks of one image apart
        return int(sample["image_id"]), tuple(sample["boxes"][0])

    single = {key(s): s for s in _samples(_batches(config, "train", train=False))}
    sharded = [
        _samples(_batches(config, "train", train=False, shard_index=i, shard_count=4))
        for i in range(4)
    ]
    assert len({len(host) for host in sharded}) == 1  # every host runs the same number of steps
    real = [s for host in sharded for s in host if s["image_id"] >= 0]
    assert sorted(map(key, real)) == sorted(single) and len(single) == 6
    for sample in real:
        np.testing.assert_array_equal(sample["points"], single[key(sample)]["points"])
    hosts_of_image = collections.defaultdict(set)
    for host, samples in enumerate(sharded):
        for sample in samples:
            hosts_of_image[int(sample["image_id"])].add(host)
    assert all(len(hosts) == 1 for image_id, hosts in hosts_of_image.items() if image_id >= 0)


def test_training_reshuffles_and_resamples_every_epoch(data_dir):
    config = _config(data_dir, host_batch_size=1, num_epochs=3)
    samples = _samples(_batches(config, "train", train=True))
    assert len(samples) == 3 * 6
    epochs = [samples[6 * e : 6 * (e + 1)] for e in range(3)]
    orders = [
        [(int(s["image_id"]), int(s["instance_valid"].sum())) for s in epoch] for epoch in epochs
    ]
    assert all(sorted(order) == sorted(orders[0]) for order in orders)
    assert len({tuple(order) for order in orders}) > 1
    by_chunk = collections.defaultdict(list)
    for epoch in epochs:
        for s in epoch:
            by_chunk[(int(s["image_id"]), int(s["instance_valid"].sum()))].append(s["points"])
    assert any(not np.array_equal(p[0], p[1]) for p in by_chunk.values())


def test_training_shards_own_whole_images_and_run_equal_steps(data_dir):
    config = _config(data_dir)  # chunks per image: 1, 3, 1, 1
    rows = [
        host_samples(config, "train", train=True, shard_index=i, shard_count=2) for i in range(2)
    ]
    assert [len(r) for r in rows] == [4, 4]
    # Host 0 owns images 0 and 2 (two chunks) and repeats them to match host 1's four.
    assert sorted(map(tuple, rows[0])) == [(0, 0), (0, 0), (2, 0), (2, 0)]
    assert sorted(map(tuple, rows[1])) == [(1, 0), (1, 3), (1, 6), (3, 0)]
    with pytest.raises(DataError, match="4 images, fewer than the 5 hosts"):
        host_samples(config, "train", train=True, shard_index=4, shard_count=5)


def test_worker_processes_give_the_same_batches(data_dir):
    config = _config(data_dir)
    in_process = _batches(config, "val", train=False)
    with_workers = _batches(
        DataConfig(**{**config.__dict__, "worker_count": 1}), "val", train=False
    )
    assert len(in_process) == len(with_workers)
    for a, b in zip(in_process, with_workers, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_config_from_config_dict_and_its_errors(data_dir):
    config = ml_collections.ConfigDict(
        {
            "dataset": "hrsid",
            "dataset_config": "inshore",
            "data_dir": str(data_dir),
            "image_size": 32,
            "pad": "bottom_right",
            "host_batch_size": 2,
        }
    )
    (batch,) = _batches(config, "test", train=False)
    assert batch["weak_image"].shape == (2, 32, 32, 3) and (batch["pad_offset"] == 0).all()
    with pytest.raises(ValueError, match="unknown data config fields: \\['img_size'\\]"):
        DataConfig.from_mapping({"img_size": 3})
    with pytest.raises(ValueError, match="pad must be"):
        DataConfig(pad="left")
    with pytest.raises(DataError, match="has no split 'validation'; it has train, val"):
        make_dataset(
            _config(data_dir), "validation", train=False, seed=0, shard_index=0, shard_count=1
        )
    with pytest.raises(DataError, match="is not built: expected .*coco_instances/default/1.0.0"):
        make_dataset(
            _config(data_dir, dataset="coco_instances"),
            "train",
            train=False,
            seed=0,
            shard_index=0,
            shard_count=1,
        )


def test_records_that_disagree_with_the_metadata_are_refused(data_dir, tmp_path):
    copy = tmp_path / "tfds"
    shutil.copytree(data_dir / "whu_building", copy / "whu_building")
    metadata_file = copy / "whu_building/default/1.0.0/metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["splits"]["val"]["image_ids"].reverse()
    metadata_file.write_text(json.dumps(metadata))
    with pytest.raises(DataError, match="record 0 holds image 200, its metadata says 201"):
        _batches(_config(copy, dataset="whu_building"), "val", train=False)


def test_train_image_halves_split_the_training_images(data_dir):
    """first_half and second_half train on disjoint halves of the images (whole images, every
    chunk), which together are the split; evaluation is not restricted."""
    from resam_jax.data.pipeline import train_image_halves

    first, second = train_image_halves([5, 3, 9, 1, 7])
    assert len(first) == 3 and len(second) == 2 and not set(first) & set(second)
    assert sorted([*first, *second]) == [1, 3, 5, 7, 9]
    np.testing.assert_array_equal(train_image_halves([9, 7, 5, 3, 1])[0], first)  # order-free

    seen = {}
    for half in ("first_half", "second_half", "all"):
        config = _config(data_dir, host_batch_size=1, train_images=half)
        rows = pipeline.host_samples(config, "train", train=True, shard_index=0, shard_count=1)
        seen[half] = set(rows[:, 0].tolist())
    assert seen["first_half"] and seen["second_half"]
    assert not seen["first_half"] & seen["second_half"]
    assert seen["first_half"] | seen["second_half"] == seen["all"]
    evaluation = pipeline.host_samples(
        _config(data_dir, host_batch_size=1, train_images="first_half"), "val", train=False,
        shard_index=0, shard_count=1,
    )  # fmt: skip
    full = pipeline.host_samples(
        _config(data_dir, host_batch_size=1), "val", train=False, shard_index=0, shard_count=1
    )
    np.testing.assert_array_equal(evaluation, full)
    with pytest.raises(ValueError, match="train_images"):
        _config(data_dir, train_images="half")
