"""Image subsets of a prepared split: the SOURCE / TARGET halves of a training set.

    ids = half_image_ids(split_image_ids(config, "train"), "first", seed=0)
    for batch in make_subset_dataset(config, "train", ids, train=True, seed=0): ...

A study that pretrains a model on one half of a training split and adapts it on the other
needs two disjoint, reproducible sets of IMAGES (never instances: the chunks of one image stay
together). `half_image_ids` draws them from a seeded permutation of the sorted image ids, so
the halves depend on the ids and the seed only, not on the order the records were prepared in.
The "first" half has ceil(n / 2) images, the "second" the rest; "all" is the whole split.

Nothing here reads or writes a config: DataConfig stays as it is, and `make_subset_dataset`
is `pipeline.make_dataset` restricted to the records of the chosen images (one host).
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from resam_jax.data import pipeline
from resam_jax.data.coco import DataError
from resam_jax.data.views import paste_masks, stack_samples

HALVES = ("first", "second", "all")


def half_image_ids(image_ids: Sequence[int], half: str, seed: int = 0) -> np.ndarray:
    """Sorted int64 ids of one half of `image_ids` ("first" | "second" | "all")."""
    if half not in HALVES:
        raise ValueError(f"half={half!r}; expected one of {HALVES}")
    ids = np.unique(np.asarray(image_ids, np.int64))
    if len(ids) != len(image_ids):
        raise ValueError("image_ids has duplicates")
    if half == "all":
        return ids
    order = np.random.default_rng(seed).permutation(len(ids))
    cut = (len(ids) + 1) // 2
    chosen = order[:cut] if half == "first" else order[cut:]
    return np.sort(ids[chosen])


def split_image_ids(config: pipeline.DataConfig, split: str) -> np.ndarray:
    """The image ids of a prepared split, in record order."""
    return np.asarray(pipeline._split_metadata(config, split)["image_ids"], np.int64)


def make_subset_dataset(
    config: pipeline.DataConfig,
    split: str,
    image_ids: Sequence[int],
    *,
    train: bool,
    seed: int,
) -> grain.IterDataset:
    """`pipeline.make_dataset(config, split, train=..., seed=...)` on one host, restricted to
    the images `image_ids`: the same samples, augmentations and per-sample randomness."""
    meta = pipeline._split_metadata(config, split)
    wanted = set(int(i) for i in image_ids)
    missing = wanted - set(int(i) for i in meta["image_ids"])
    if missing:
        raise DataError(f"{config.dataset}/{split} has no images {sorted(missing)[:10]}")
    rows = pipeline.chunk_index(meta["num_instances"], config.max_instances)
    keep = np.array([int(meta["image_ids"][r]) in wanted for r in rows[:, 0]], bool)
    rows = rows[keep.reshape(-1)] if len(rows) else rows
    if train and len(rows) == 0:
        raise DataError(f"no training samples in {config.dataset}/{split} for these images")
    if not train:
        padded = -(-len(rows) // config.batch_size) * config.batch_size
        rows = np.concatenate([rows, np.tile(np.int64([[-1, 0]]), (padded - len(rows), 1))])
    loader = pipeline._SampleLoader(config, split, seed=seed, train=train, epoch_length=len(rows))
    dataset = grain.MapDataset.source(rows)
    if train:
        dataset = dataset.shuffle(seed=seed).repeat(config.num_epochs)
    read_options = grain.ReadOptions(
        num_threads=config.read_threads,
        prefetch_buffer_size=config.prefetch_batches * config.batch_size,
    )
    return (
        dataset.map_with_index(loader)
        .to_iter_dataset(read_options)
        .batch(config.batch_size, drop_remainder=train, batch_fn=stack_samples)
        .map(paste_masks)
    )
