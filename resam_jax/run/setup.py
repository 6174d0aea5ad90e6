"""What a run needs before its first step: `prepare(config, workdir)` gives the model, the
prepared data and this process's data config, after checking the config's fields once.

Every problem the user fixes outside the code (missing weights, unprepared data, a bad config
value) is a RunError whose message says what to do.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

import jax
import ml_collections

from resam_jax import models, parallel
from resam_jax.config import resolve_method_variant
from resam_jax.data import pipeline
from resam_jax.data.builders import load_prepared, prepare_help
from resam_jax.data.coco import DataError
from resam_jax.data.prepare import prepare as prepare_dataset
from resam_jax.data.synthetic import write_coco_dataset
from resam_jax.method.train_state import TRAIN_MODES
from resam_jax.models import Backbone
from resam_jax.run import reporting

MODES = (*TRAIN_MODES, "direct")


class RunError(Exception):
    """A problem the user fixes outside the code (missing weights, unprepared data, bad config);
    the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What prepare() sets up for a command."""

    model: Backbone
    data_config: pipeline.DataConfig  # this process's share of config.data
    workdir: Path  # absolute, created
    data_dir: Path
    manual_dir: Path | None


def _allowed_values(config: ml_collections.ConfigDict) -> dict[str, tuple]:
    """config field -> its allowed values: the fields a run cannot recover from once started.
    The model's fields are its family's (resam_jax.models.config_choices), once
    model.family is known."""
    from resam_jax.data.synthetic import STYLES
    from resam_jax.method.eval_step import PROMPTS
    from resam_jax.method.metrics import REDUCTIONS
    from resam_jax.method.train_state import OUTLIER_RULES

    allowed = {
        "method.mode": MODES,
        "method.outlier_rule": OUTLIER_RULES,
        "model.family": models.FAMILIES,
        "eval.prompt": PROMPTS,
        "eval.threshold_on": ("logits", "probs"),
        "eval.reduction": REDUCTIONS,
        "data.synthetic_style": tuple(STYLES),
    }
    if config.model.get("family", "sam") in models.FAMILIES:
        family = models.config_choices(config)
        allowed.update({f"model.{field}": values for field, values in family.items()})
    return allowed


# config field -> (its smallest value, what that value means, or "").
_MINIMA = {
    "train.num_epochs": (1, ""),
    "train.grad_accum_steps": (1, ""),
    "train.instance_chunk_size": (0, " (0: all instances at once)"),
    "train.max_steps": (0, " (0: train.num_epochs)"),
    "data.batch_size": (1, ""),
    "eval.prompt_seeds": (1, ""),
}


def _field(config: ml_collections.ConfigDict, dotted: str):
    for part in dotted.split("."):
        config = config[part]
    return config


def check_config(config: ml_collections.ConfigDict) -> None:
    """The config's fields checked against their allowed values, once, before anything is
    built or written: a RunError naming the field and what it may be. method.variant's switches
    are resolved here, in place (resam_jax.config.resolve_method_variant)."""
    try:
        resolve_method_variant(config)
    except ValueError as e:
        raise RunError(str(e)) from None
    for name, allowed in _allowed_values(config).items():
        value = _field(config, name)
        if (tuple(value) if isinstance(value, list) else value) not in allowed:
            family = ""
            if name.startswith("model.") and name != "model.family":
                family = f" (model.family={config.model.get('family', 'sam')!r})"
            raise RunError(f"config.{name}={value!r}; expected one of {allowed}{family}")
    for name, (minimum, meaning) in _MINIMA.items():
        if _field(config, name) < minimum:
            or_more = "0 or positive" if minimum == 0 else f"at least {minimum}"
            raise RunError(f"config.{name}={_field(config, name)} must be {or_more}{meaning}")


def writable_workdir(workdir: str | Path) -> tuple[Path, bool]:
    """(the absolute workdir, whether this call created it), checked writable; a RunError
    naming the folder otherwise."""
    workdir = Path(workdir).expanduser().resolve()
    created = not workdir.exists()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=workdir):
            pass
    except OSError as e:
        raise RunError(f"--workdir {workdir} is not a writable folder: {e.strerror or e}") from None
    return workdir, created


def prepare(config: ml_collections.ConfigDict, workdir: str | Path) -> Prepared:
    """The set-up every command repeats (train_and_evaluate, robustness, diagnose): the config
    checked, the workdir created, this process's data config, the dataset generated (synthetic)
    or found prepared, the model. A RunError here removes a workdir this call created."""
    check_config(config)
    workdir, created = writable_workdir(workdir)
    try:
        data_dir, manual_dir = data_paths(config, workdir)
        try:
            data_config = host_data_config(config, data_dir)
        except ValueError as e:  # per_host_batch_size
            raise RunError(str(e)) from None
        ensure_dataset(config, data_dir, manual_dir)
        model = build_model(config)
    except RunError:
        if created and jax.process_index() == 0:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return Prepared(model, data_config, workdir, data_dir, manual_dir)


def build_model(config: ml_collections.ConfigDict) -> Backbone:
    """The backbone of config.model (resam_jax.models.build), its problems as RunErrors."""
    try:
        return models.build(config)
    except models.ModelError as e:
        raise RunError(str(e)) from None


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
            with reporting.library_prints():
                summary = prepare_dataset(
                    data.dataset, config=data.dataset_config, data_dir=data_dir,
                    manual_dir=manual_dir, annotations=splits,
                )  # fmt: skip
            counts = ", ".join(f"{n} {s['images']} images" for n, s in summary["splits"].items())
            logging.info("synthetic dataset: %s, in %s", counts, data_dir)
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
