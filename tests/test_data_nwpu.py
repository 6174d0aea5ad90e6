"""The real NWPU VHR-10 release (../shared/data/NWPU or $RESAM_NWPU_DIR): built once per session."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from data_fixtures import nwpu_real_dir
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from resam_jax.data.builders import load_prepared
from resam_jax.data.pipeline import DataConfig, host_samples, make_dataset
from resam_jax.data.prepare import prepare

pytestmark = [
    pytest.mark.skipif(
        nwpu_real_dir() is None, reason="real NWPU VHR-10 not found next to the repository"
    ),
]


@pytest.fixture(scope="session")
def nwpu(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("nwpu_real")
    summary = prepare("nwpu_vhr10", manual_dir=nwpu_real_dir(), data_dir=data_dir)
    return data_dir, summary


def test_counts_match_the_published_split(nwpu):
    _, summary = nwpu
    counts = {
        s: (v["images"], v["instances"], v["skipped"]["total"])
        for s, v in summary["splits"].items()
    }
    assert counts == {"train": (520, 3178, 0), "val": (130, 743, 0)}


@pytest.mark.parametrize("split", ["train", "val"])
def test_masks_equal_pycocotools_ann_to_mask(nwpu, split):
    data_dir, _ = nwpu
    coco = COCO(str(nwpu_real_dir() / f"Annotations/NWPU_instances_{split}.json"))
    source = load_prepared(data_dir, "nwpu_vhr10", "default").as_data_source(split)
    checked = 0
    for record in range(0, len(source), 9):
        example = source[record]
        height, width = example["image"].shape[:2]
        expected_ids = sorted(coco.getAnnIds(imgIds=int(example["image_id"])))
        assert sorted(int(i) for i in example["instances"]["annotation_id"]) == expected_ids
        for rle, ann_id in zip(
            example["instances"]["mask_rle"], example["instances"]["annotation_id"], strict=True
        ):
            mask = mask_utils.decode({"size": [height, width], "counts": rle})
            np.testing.assert_array_equal(mask, coco.annToMask(coco.anns[int(ann_id)]))
            checked += 1
    assert checked > 50


def test_evaluation_pass_uses_every_instance_once(nwpu):
    data_dir, _ = nwpu
    config = DataConfig(data_dir=str(data_dir), image_size=128, max_instances=50, host_batch_size=8)
    metadata = json.loads((data_dir / "nwpu_vhr10/default/1.0.0/metadata.json").read_text())[
        "splits"
    ]["val"]
    assert max(metadata["num_instances"]) > 50  # so chunking is exercised
    rows = host_samples(config, "val", train=False, shard_index=0, shard_count=1)
    assert (rows[:, 0] >= 0).sum() == sum(math.ceil(n / 50) for n in metadata["num_instances"])
    valid = 0
    for batch in make_dataset(config, "val", train=False, seed=0, shard_index=0, shard_count=1):
        valid += int(batch["instance_valid"].sum())
    assert valid == 743


def test_training_batches_at_1024(nwpu):
    data_dir, _ = nwpu
    config = DataConfig(data_dir=str(data_dir), num_points=3, host_batch_size=1)
    for batch in itertools.islice(
        make_dataset(config, "train", train=True, seed=1337, shard_index=0, shard_count=1), 3
    ):
        assert batch["weak_image"].shape == (1, 1024, 1024, 3) and batch["masks"].shape == (
            1,
            50,
            1024,
            1024,
        )
        top, left = batch["pad_offset"][0]
        newh, neww = batch["resized_size"][0]
        assert max(newh, neww) == 1024 and (top, left) == ((1024 - newh) // 2, (1024 - neww) // 2)
        for i in np.flatnonzero(batch["instance_valid"][0]):
            xy = batch["points"][0, i].astype(int)
            hits = batch["masks"][0, i][xy[:, 1], xy[:, 0]]
            np.testing.assert_array_equal(hits, [True] * 3 + [False] * 3)
