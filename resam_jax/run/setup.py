"""What a run needs before its first step: the SAM model, the prepared data, the data config.

Every problem the user fixes outside the code (missing weights, unprepared data, a bad config
value) is a RunError whose message says what to do.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import jax
import ml_collections
from flax import nnx

from resam_jax import parallel
from resam_jax.data import pipeline
from resam_jax.data.builders import load_prepared, prepare_help
from resam_jax.data.coco import DataError
from resam_jax.data.prepare import prepare
from resam_jax.data.synthetic import write_coco_dataset
from resam_jax.model import CheckpointError, Sam, load_sam, sam_config
from resam_jax.model.checkpoint import conversion_help


class RunError(Exception):
    """A problem the user fixes outside the code (missing weights, unprepared data, bad config);
    the message says what to do."""


def build_model(config: ml_collections.ConfigDict) -> Sam:
    """SAM with LoRA from config.model: a converted checkpoint, or random weights if none."""
    model_config = config.model
    # The LoRA, the computation dtype and the memory options: what a checkpoint does not fix.
    options = dict(
        lora_rank=model_config.lora_rank,
        lora_start_layer=model_config.lora_start_layer,
        dtype=model_config.dtype,
        attention=model_config.attention,
        attention_chunk_size=model_config.attention_chunk_size,
        remat=model_config.remat,
    )
    image_size = config.data.image_size
    if not model_config.checkpoint:
        logging.warning(
            "config.model.checkpoint is empty: SAM %s is RANDOMLY INITIALISED (no pretrained "
            "weights); its scores only show that the pipeline runs.", model_config.model_type
        )  # fmt: skip
        sam = sam_config(model_config.model_type, image_size=image_size, **options)
        return Sam(sam, rngs=nnx.Rngs(config.seed))
    directory = Path(model_config.checkpoint).expanduser()
    if not directory.exists():
        raise RunError(
            f"no converted SAM checkpoint at {directory} (config.model.checkpoint). "
            + conversion_help(directory, model_config.model_type)
        )
    try:
        model = load_sam(directory, **options)
    except CheckpointError as e:
        raise RunError(str(e)) from None
    if model.config.model_type != model_config.model_type:
        raise RunError(
            f"{directory} holds SAM {model.config.model_type}, but config.model.model_type="
            f"{model_config.model_type!r}; point config.model.checkpoint at a converted "
            f"{model_config.model_type} or set --config.model.model_type={model.config.model_type}"
        )
    if model.config.image_size != image_size:
        raise RunError(
            f"{directory} is a SAM for {model.config.image_size}x{model.config.image_size} inputs but "
            f"config.data.image_size={image_size}; set --config.data.image_size={model.config.image_size}"
        )
    return model


def data_paths(config: ml_collections.ConfigDict, workdir: Path) -> tuple[Path, Path | None]:
    """(data_dir, manual_dir); empty entries mean folders inside the workdir."""
    data_dir = Path(config.data.data_dir).expanduser() if config.data.data_dir else workdir / "data"
    if config.data.manual_dir:
        manual_dir = Path(config.data.manual_dir).expanduser()
    else:
        manual_dir = workdir / "data" / "synthetic" if config.data.synthetic_images else None
    return data_dir, manual_dir


def ensure_dataset(
    config: ml_collections.ConfigDict, data_dir: Path, manual_dir: Path | None
) -> None:
    """Generates and prepares the synthetic dataset when configured; otherwise checks that the
    dataset is prepared and says how to prepare it if not."""
    data = config.data
    if data.synthetic_images:
        if jax.process_index() == 0:
            if not (manual_dir / "annotations" / "val.json").is_file():
                write_coco_dataset(
                    manual_dir,
                    num_train=data.synthetic_images,
                    num_val=max(4, data.synthetic_images // 4),
                    image_size=160,
                    seed=config.seed,
                    style=data.synthetic_style,
                )
            splits = {
                data.train_split: "annotations/train.json",
                data.eval_split: "annotations/val.json",
            }
            summary = prepare(
                data.dataset, config=data.dataset_config, data_dir=data_dir, manual_dir=manual_dir,
                annotations=splits,
            )  # fmt: skip
            logging.info("synthetic dataset: %s", json.dumps(summary["splits"]))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("synthetic dataset prepared")
        return
    try:
        load_prepared(data_dir, data.dataset, data.dataset_config)
    except DataError:
        raise RunError(
            f"dataset {data.dataset}/{data.dataset_config} is not prepared in {data_dir} "
            "(config.data.data_dir). "
            + prepare_help(data.dataset, data.dataset_config, data_dir, manual_dir or "DIR")
        ) from None


def host_data_config(config: ml_collections.ConfigDict, data_dir: Path) -> pipeline.DataConfig:
    """This process's DataConfig: the DataConfig fields of config.data (the others are the
    run's own), with this process's share of the global batch."""
    per_device = config.data.batch_size // jax.device_count()
    if config.train.grad_accum_steps < 1 or per_device % config.train.grad_accum_steps:
        raise RunError(
            f"train.grad_accum_steps={config.train.grad_accum_steps} must divide the per-device "
            f"batch ({config.data.batch_size} images over {jax.device_count()} devices): each "
            "device splits its own images into the micro-batches"
        )
    known = {f.name for f in dataclasses.fields(pipeline.DataConfig)}
    fields = {k: v for k, v in config.data.to_dict().items() if k in known}
    fields.update(
        data_dir=str(data_dir),
        host_batch_size=parallel.per_host_batch_size(config.data.batch_size),
    )
    try:
        return pipeline.DataConfig.from_mapping(fields)
    except ValueError as e:
        raise RunError(f"config.data: {e}") from None


def train_steps_per_epoch(data_config: pipeline.DataConfig, split: str) -> int:
    """Batches per epoch, equal on every process (the smallest shard decides)."""
    count = jax.process_count()
    steps = min(
        pipeline.steps_per_epoch(data_config, split, train=True, shard_index=i, shard_count=count)
        for i in range(count)
    )
    if steps == 0:
        raise RunError(
            f"{data_config.dataset}/{split} has too few samples for one global batch of "
            f"{data_config.batch_size * count}; lower config.data.batch_size"
        )
    return steps
