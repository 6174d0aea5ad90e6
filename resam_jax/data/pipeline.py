"""Host-side input pipeline: built TFDS split -> fixed-shape numpy batches (the batch contract).

    config = DataConfig(dataset="nwpu_vhr10", data_dir="~/tensorflow_datasets")
    for batch in make_dataset(config, "train", train=True, seed=1337):
        ...  # dict of numpy arrays, leading dim config.host_batch_size

Every sample is one (image, chunk) pair: an image with more than `max_instances` instances
becomes several samples, so every instance is used every epoch (the public code trains on
chunks of 50). The flattened (image, chunk) index is sharded across hosts by image, shuffled
per epoch in training, and turned into samples by grain with threads and, optionally, worker
processes. Each sample draws its randomness from (seed, epoch, image, chunk), so training
views differ every epoch and evaluation prompts depend on the seed alone, not on the number
of hosts, workers or the batch size.

Evaluation runs one pass; its last batch is filled with empty samples (image_id -1, no
valid instance) so shapes stay static and every host runs the same number of steps. The
chunks of one image share its image_id: per-image metrics sum over them.
Pixel normalisation is left to the device (see resam_jax.models.Backbone.encode_pixels).

With `tile_size` > 0 the unit of sampling is a native-resolution tile (resam_jax.data.tiles)
instead of an image: rows index the split's tiles, chunked the same way; hosts still own whole
images, and the tiles of an image share its image_id.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import math
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from absl import flags, logging
from PIL import Image
from pycocotools import mask as mask_utils

from resam_jax.data import corruptions, tiles
from resam_jax.data.builders import load_prepared
from resam_jax.data.coco import DataError
from resam_jax.data.config import TRAIN_IMAGES, DataConfig  # noqa: F401 (re-exported)
from resam_jax.data.views import (
    empty_sample,
    make_sample,
    paste_masks,
    stack_samples,
)

# The halves must not move with the run's seed: a fixed seed of their own.
_HALVES_SEED = 0


def train_image_halves(image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(first half, second half) of a split's image ids, each sorted: a permutation of the
    sorted ids with a fixed seed, so the halves depend on the ids alone (not on the record
    order, the run seed or the number of hosts). The first half has ceil(n / 2) images."""
    ids = np.unique(np.asarray(image_ids, np.int64))
    order = np.random.default_rng(_HALVES_SEED).permutation(len(ids))
    cut = (len(ids) + 1) // 2
    return np.sort(ids[order[:cut]]), np.sort(ids[order[cut:]])


def chunk_index(num_instances: Sequence[int], max_instances: int) -> np.ndarray:
    """[M, 2] int64 rows (record, first instance): one per chunk of <= max_instances instances."""
    rows = [
        (record, first)
        for record, n in enumerate(num_instances)
        for first in range(0, n, max_instances)
    ]
    return np.array(rows, np.int64).reshape(-1, 2)


def _resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    if shard_index is None and shard_count is None:
        import jax  # only needed for the default multi-host split

        return jax.process_index(), jax.process_count()
    if shard_index is None or shard_count is None or not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index} / {shard_count}")
    return shard_index, shard_count


def host_samples(
    config: DataConfig, split: str, *, train: bool, shard_index: int, shard_count: int
) -> np.ndarray:
    """This host's (record, first instance) rows, the same number on every host.

    Hosts own whole images (record % shard_count), so the chunks of an image are evaluated
    on one host. Every host gets as many rows as the largest share, so all run the same
    number of steps: training repeats a few of its own rows, evaluation adds (-1, 0) rows
    (empty samples) and rounds up to whole batches.
    """
    meta = _split_metadata(config, split)
    split_tiles = split_tile_table(config, split)
    if split_tiles is None:
        num_instances = meta["num_instances"]
        unit_records = np.arange(len(num_instances), dtype=np.int64)
    else:
        num_instances = [len(tile.instances) for tile in split_tiles]
        unit_records = np.array([tile.record for tile in split_tiles], np.int64)
    rows = chunk_index(num_instances, config.max_instances)
    records = unit_records[rows[:, 0]]
    if train and config.train_images != "all":
        first, second = train_image_halves(meta["image_ids"])
        wanted = first if config.train_images == "first_half" else second
        image_ids = np.asarray(meta["image_ids"], np.int64)
        keep = np.isin(image_ids[records], wanted)
        rows, records = rows[keep], records[keep]
    owner = records % shard_count
    per_host = int(np.bincount(owner, minlength=shard_count).max())
    mine = rows[owner == shard_index]
    if train:
        if len(mine) == 0:
            raise DataError(
                f"{config.dataset}/{split} has {len(meta['num_instances'])} images, fewer than the {shard_count} hosts"
            )
        return np.resize(mine, (per_host, 2))
    per_host = math.ceil(per_host / config.host_batch_size) * config.host_batch_size
    padding = np.tile(np.int64([[-1, 0]]), (per_host - len(mine), 1))
    return np.concatenate([mine, padding])


def steps_per_epoch(
    config: DataConfig,
    split: str,
    *,
    train: bool,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> int:
    """Batches in one pass over this host's samples; the same on every host."""
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    n = len(
        host_samples(config, split, train=train, shard_index=shard_index, shard_count=shard_count)
    )
    return n // config.host_batch_size


def _split_metadata(config: DataConfig, split: str) -> dict[str, Any]:
    builder = load_prepared(
        Path(config.data_dir).expanduser(), config.dataset, config.dataset_config
    )
    splits = builder.info.metadata["splits"]
    if split not in splits:
        raise DataError(
            f"{config.dataset}/{config.dataset_config} has no split {split!r}; it has {', '.join(splits)}"
        )
    return splits[split]


def split_tile_table(config: DataConfig, split: str) -> tuple[tiles.Tile, ...] | None:
    """The split's tiles in record order (None without data.tile_size): computed once per
    process from each record's image size and instance boxes."""
    if config.tile_size == 0:
        return None
    return _tile_table(
        str(Path(config.data_dir).expanduser()), config.dataset, config.dataset_config, split,
        config.tile_size, config.tile_stride or tiles.default_stride(config.tile_size),
    )  # fmt: skip


def tile_summary(config: DataConfig, split: str) -> tiles.TileSummary | None:
    """How the split's instances were placed in tiles (None without data.tile_size)."""
    if config.tile_size == 0:
        return None
    return _tile_summary(
        str(Path(config.data_dir).expanduser()), config.dataset, config.dataset_config, split,
        config.tile_size, config.tile_stride or tiles.default_stride(config.tile_size),
    )[0]  # fmt: skip


@functools.lru_cache(maxsize=16)
def _tile_summary(data_dir, dataset, dataset_config, split, tile_size, stride):
    summary = tiles.TileSummary()
    table = []
    for record, (height, width, boxes) in enumerate(
        _record_geometry(data_dir, dataset, dataset_config, split)
    ):
        record_tiles, counts = tiles.tile_image(record, height, width, boxes, tile_size, stride)
        table.extend(record_tiles)
        summary += counts
    logging.info(
        "%s/%s %s: %d images, %d instances in tiles of %d px (stride %d): %d grid tiles, "
        "%d extra tiles at native resolution, %d oversized instances shrunk in windows of their own",
        dataset, dataset_config, split, summary.images, summary.instances, tile_size, stride,
        summary.grid_tiles, summary.extra_tiles, summary.oversized,
    )  # fmt: skip
    return summary, tuple(table)


def _tile_table(data_dir, dataset, dataset_config, split, tile_size, stride):
    return _tile_summary(data_dir, dataset, dataset_config, split, tile_size, stride)[1]


@functools.lru_cache(maxsize=8)
def _record_geometry(data_dir, dataset, dataset_config, split):
    """Per record: (height, width, instance boxes [n, 4] xyxy), read without decoding pixels."""
    import tensorflow_datasets as tfds  # heavy; only tiled pipelines need it here

    builder = load_prepared(Path(data_dir), dataset, dataset_config)
    source = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    geometry = []
    for record in range(len(source)):
        example = source[record]
        width, height = Image.open(io.BytesIO(example["image"])).size
        boxes = np.asarray(example["instances"]["bbox"], np.float32).reshape(-1, 4)
        geometry.append((height, width, boxes))
    return tuple(geometry)


def crop_rle(rle: bytes, source: tuple[int, int], window: Sequence[int]) -> bytes:
    """A compressed COCO RLE of a `source`-sized mask, cut to `window` (top, left, h, w)."""
    top, left, height, width = window
    full = mask_utils.decode({"size": list(source), "counts": rle})
    crop = np.asfortranarray(full[top : top + height, left : left + width])
    return mask_utils.encode(crop)["counts"]


class _ImageCache:
    """A thread-safe least-recently-used cache of arrays, bounded by their bytes.

    Pickles as an empty cache of the same bound (its lock and arrays stay in their process), so a
    loader that holds one can be shipped to grain's worker processes.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[Any, np.ndarray] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __reduce__(self):
        return _ImageCache, (self.max_bytes,)

    def get(self, key) -> np.ndarray | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key, value: np.ndarray) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self._bytes += value.nbytes
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def __len__(self) -> int:
        return len(self._items)


@functools.lru_cache(maxsize=16)
def _shared_image_cache(data_dir, dataset, dataset_config, split, max_bytes) -> _ImageCache:
    return _ImageCache(max_bytes)


class _SampleLoader:
    """(index, (record, first)) -> sample dict. Picklable, so grain can ship it to workers."""

    def __init__(
        self, config: DataConfig, split: str, *, seed: int, train: bool, epoch_length: int
    ):
        self._config = config
        self._split = split
        self._seed = seed
        self._train = train
        self._epoch_length = epoch_length
        self._image_ids = _split_metadata(config, split)["image_ids"]
        self._tiles = split_tile_table(config, split)
        self._source = None  # opened lazily, once per process
        # One per prepared split, shared by its loaders (the evaluation's prompt draws, the rows
        # of a study) in this process.
        self._corrupted = _shared_image_cache(
            str(Path(config.data_dir).expanduser()), config.dataset, config.dataset_config, split,
            config.corruption_cache_mb * 2**20,
        )  # fmt: skip

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def _open(self):
        if self._source is None:
            builder = load_prepared(
                Path(self._config.data_dir).expanduser(),
                self._config.dataset,
                self._config.dataset_config,
            )
            self._source = builder.as_data_source(self._split)
        return self._source

    def __call__(self, index: int, row: np.ndarray) -> dict[str, Any]:
        unit, first = int(row[0]), int(row[1])
        view = self._config  # a DataConfig is the ViewConfig of its samples
        if unit < 0:
            return empty_sample(view)
        record = unit if self._tiles is None else self._tiles[unit].record
        example = self._open()[record]
        if int(example["image_id"]) != self._image_ids[record]:
            raise DataError(
                f"{self._config.dataset}/{self._split} record {record} holds image {example['image_id']}, "
                f"its metadata says {self._image_ids[record]}: the prepared files are inconsistent; rebuild them"
            )
        instances = example["instances"]
        chunk = slice(first, first + view.max_instances)
        epoch = index // self._epoch_length if self._train else 0
        image_id = int(example["image_id"])
        image = example["image"]
        rles = instances["mask_rle"]
        boxes = np.asarray(instances["bbox"], np.float32).reshape(-1, 4)
        seed = [self._seed, epoch, record, first]
        if self._tiles is not None:
            tile = self._tiles[unit]
            if view.corruption:  # the scene is corrupted, then cut: tiles see one corruption
                key = (record, view.corruption, view.corruption_severity)
                corrupted = self._corrupted.get(key)
                if corrupted is None:
                    corrupted = corruptions.corrupt(
                        image, view.corruption, view.corruption_severity, image_id
                    )
                    corrupted.setflags(write=False)  # shared by the image's tiles: read only
                    self._corrupted.put(key, corrupted)
                image = corrupted
                view = dataclasses.replace(view, corruption="")
            top, left, height, width = tile.window
            chosen = list(tile.instances[chunk])
            source = image.shape[:2]
            image = image[top : top + height, left : left + width]
            rles = [crop_rle(rles[i], source, tile.window) for i in chosen]
            boxes = boxes[chosen] - np.float32([left, top, left, top])
            chunk = slice(None)
            # Seeded by the record's index of the chunk's first instance: a tile holding the
            # whole image draws what the untiled pipeline draws, other tiles their own streams.
            seed[3] = tile.instances[first]
        return make_sample(
            image,
            rles[chunk],
            boxes[chunk],
            image_id,
            config=view,
            rng=np.random.default_rng(seed),
            augment=self._train,
        )


def make_dataset(
    config: DataConfig | Mapping[str, Any],
    split: str,
    *,
    train: bool,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.IterDataset:
    """Batches of the batch contract for this host (default: jax.process_index()/process_count()).

    Training shuffles every epoch, flips and applies the strong augmentations, and repeats
    `config.num_epochs` times (forever if None). Evaluation is one deterministic pass. The
    returned grain dataset is iterable, and its iterator's state can be checkpointed.
    """
    if not isinstance(config, DataConfig):
        config = DataConfig.from_mapping(config)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    shard_index, shard_count = _resolve_shard(shard_index, shard_count)
    rows = host_samples(
        config, split, train=train, shard_index=shard_index, shard_count=shard_count
    )
    loader = _SampleLoader(config, split, seed=seed, train=train, epoch_length=len(rows))

    dataset = grain.MapDataset.source(rows)
    if train:
        dataset = dataset.shuffle(seed=seed + shard_index).repeat(config.num_epochs)
    read_options = grain.ReadOptions(
        num_threads=config.read_threads,
        prefetch_buffer_size=config.prefetch_batches * config.host_batch_size,
    )
    iterable = (
        dataset.map_with_index(loader)
        .to_iter_dataset(read_options)
        .batch(config.host_batch_size, drop_remainder=train, batch_fn=stack_samples)
    )
    if config.worker_count > 0:
        # Grain's workers read absl flags of their own; outside an absl app (tests, notebooks)
        # nothing has parsed them, and the defaults are what we want.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iterable = iterable.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=config.worker_count)
        )
    # Dense masks (~52 MB per 1024 sample with 50 slots, nearly all zeros) are made here, in the
    # consuming process: handing them between processes cost more than building a sample.
    return iterable.map(paste_masks)
