"""The run: evaluation of SAM as it is, ReSAM (or supervised) training, evaluation, exports.

    train_and_evaluate(config, workdir)      # configs/*.py, usually through resam_jax.main

Data parallel over every device of every process (resam_jax.parallel): each process loads its
own shard of the data, the global batch is sharded along the ("data",) mesh axis, the train
state and the frozen SAM weights are replicated, and the steps are jitted with those shardings.
A workdir holding a checkpoint resumes from it; SIGTERM checkpoints and stops.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from resam_jax import checkpointing, parallel, reporting
from resam_jax.config import RUN_DATA_KEYS
from resam_jax.data import pipeline
from resam_jax.data.builders import load_prepared
from resam_jax.data.coco import DataError
from resam_jax.data.prepare import prepare
from resam_jax.data.synthetic import write_coco_dataset
from resam_jax.evaluate import batch_prompts, make_eval_step, predict_logits
from resam_jax.metrics import SCORE_NAMES, ImageAveragedScores, binarize
from resam_jax.model import CheckpointError, Sam, SamConfig, load_sam, normalize_pixels, sam_config
from resam_jax.train_state import TRAIN_MODES, create_train_state, split_model
from resam_jax.train_step import make_train_step, teacher_pseudo_labels

MODES = (*TRAIN_MODES, "direct")

SAM_DOWNLOADS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}

DATASET_LAYOUTS = {
    "nwpu_vhr10": "NWPU VHR-10 (positive set) with the COCO JSON of the public ReSAM/PointSAM code: "
    "<manual_dir>/Images/*.jpg and <manual_dir>/Annotations/NWPU_instances_{train,val}.json",
    "whu_building": "WHU building tiles with COCO JSON: <manual_dir>/annotations/WHU_building_{train,val,test}.json "
    "and <manual_dir>/images/{train,val,test}/image/*",
    "hrsid": "HRSID with its COCO JSON: <manual_dir>/Annotations/inshore/inshore_{train,test}.json "
    "(and offshore/, all/) and <manual_dir>/Images/*.png",
    "coco_instances": "your COCO-style data: <manual_dir>/images/ and <manual_dir>/annotations/{train,val}.json",
}


class RunError(Exception):
    """A problem the user fixes outside the code (missing weights, unprepared data, bad config);
    the message says what to do."""


# --------------------------------------------------------------------------- model and data


def build_model(config: ml_collections.ConfigDict) -> Sam:
    """SAM with LoRA from config.model: a converted checkpoint, or random weights if none."""
    model_config = config.model
    lora = dict(
        lora_rank=model_config.lora_rank,
        lora_start_layer=model_config.lora_start_layer,
        dtype=model_config.dtype,
    )
    image_size = config.data.image_size
    if not model_config.checkpoint:
        logging.warning(
            "config.model.checkpoint is empty: SAM %s is RANDOMLY INITIALISED (no pretrained "
            "weights); its scores only show that the pipeline runs.", model_config.model_type
        )  # fmt: skip
        sam = sam_config(model_config.model_type, image_size=image_size, **lora)
        return Sam(sam, rngs=nnx.Rngs(config.seed))
    directory = Path(model_config.checkpoint).expanduser()
    if not directory.exists():
        url = SAM_DOWNLOADS.get(model_config.model_type, SAM_DOWNLOADS["vit_b"])
        raise RunError(
            f"no converted SAM checkpoint at {directory} (config.model.checkpoint). Download "
            f"{url}, then convert it once:\n  python -m weights_convert.convert_sam "
            f"--checkpoint {url.rsplit('/', 1)[1]} --output {directory}"
        )
    try:
        model = load_sam(directory, **lora)
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
        manual = manual_dir or Path("DIR")
        raise RunError(
            f"dataset {data.dataset}/{data.dataset_config} is not prepared in {data_dir} "
            f"(config.data.data_dir). Get {DATASET_LAYOUTS.get(data.dataset, data.dataset)}, "
            f"with manual_dir={manual}, then run once:\n  python -m resam_jax.data.prepare "
            f"--dataset {data.dataset} --config {data.dataset_config} --manual-dir {manual} --data-dir {data_dir}"
        ) from None


def host_data_config(config: ml_collections.ConfigDict, data_dir: Path) -> pipeline.DataConfig:
    """This process's DataConfig: config.data less the run's own keys, with its share of the batch."""
    fields = {k: v for k, v in config.data.to_dict().items() if k not in RUN_DATA_KEYS}
    fields.update(
        data_dir=str(data_dir), batch_size=parallel.per_host_batch_size(config.data.batch_size)
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


# --------------------------------------------------------------------------- evaluation


def make_overlay_step(graphdef: nnx.GraphDef, config: ml_collections.ConfigDict):
    """Jitted (student_lora, teacher_lora, frozen, batch) -> the prediction, pseudo-label and
    its validity for drawing: the eval prompts on the student, Refine + Requery on the teacher."""
    pixel_norm, prompt = config.model.pixel_norm, config.eval.prompt

    def overlay_step(student_lora, teacher_lora, frozen, batch):
        logits = predict_logits(
            nnx.merge(graphdef, student_lora, frozen), batch, prompt, pixel_norm
        )
        images = normalize_pixels(batch["weak_image"], batch["content_mask"], pixel_norm)
        pseudo = teacher_pseudo_labels(
            nnx.merge(graphdef, teacher_lora, frozen),
            images,
            batch_prompts(batch, "points"),
            batch["instance_valid"],
            config.method.refine_threshold,
        )
        return {
            "prediction": binarize(logits, config.eval.threshold_on),
            "pseudo_label": pseudo.masks if config.method.requery else pseudo.refined,
            "pseudo_valid": pseudo.valid,
        }

    return overlay_step


class Evaluator:
    """Scores a LoRA set on the evaluation split and draws a few overlays.

    Point prompts are random draws: the published numbers come from one draw that no other
    implementation can replay, so every evaluation is repeated over config.eval.prompt_seeds
    draws (seeds config.seed, config.seed + 1, ...) and reports the mean and the standard
    deviation over them (`<score>_std`, 0 for a single draw). Box prompts do not depend on the
    seed and are scored once.
    """

    def __init__(self, graphdef, config, data_config, mesh, workdir: Path):
        rep, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
        self._eval_step = jax.jit(
            make_eval_step(graphdef, config), in_shardings=(rep, rep, sharded), out_shardings=rep
        )
        self._overlay_step = jax.jit(
            make_overlay_step(graphdef, config),
            in_shardings=(rep, rep, rep, sharded),
            out_shardings=rep,
        )
        self._config = config
        self.set_data(data_config)
        self._mesh = mesh
        self._reduction = config.eval.reduction
        self._num_overlays = config.train.num_overlays
        self._workdir = workdir

    def set_data(self, data_config: pipeline.DataConfig) -> None:
        """Evaluates on data made with `data_config` from now on (the compiled steps stay)."""
        config = self._config
        num_draws = config.eval.prompt_seeds if config.eval.prompt == "points" else 1
        if num_draws < 1:
            raise RunError(f"config.eval.prompt_seeds={config.eval.prompt_seeds}; expected >= 1")
        self._datasets = [
            pipeline.make_dataset(
                data_config, config.data.eval_split, train=False, seed=config.seed + draw
            )
            for draw in range(num_draws)
        ]

    def _batches(
        self, draw: int = 0
    ) -> Iterable[tuple[dict[str, np.ndarray], dict[str, jax.Array]]]:
        for local in self._datasets[draw]:
            yield local, parallel.global_batch(local, self._mesh)

    def scores(self, lora, frozen) -> dict[str, float]:
        """{score: mean over prompt draws, score_std: their standard deviation (ddof 1),
        "images", "prompt_seeds"}."""
        draws = []
        for draw in range(len(self._datasets)):
            scores = ImageAveragedScores(self._reduction)
            for _, batch in self._batches(draw):
                out = self._eval_step(lora, frozen, batch)
                scores.update(out["counts"], out["instance_valid"], out["image_id"])
            draws.append(scores.result())
        summary: dict[str, float] = {}
        for name in SCORE_NAMES:
            values = np.array([d[name] for d in draws])
            summary[name] = float(values.mean())
            summary[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return {**summary, "images": scores.num_images, "prompt_seeds": len(draws)}

    def overlays(self, step: int, student_lora, teacher_lora, frozen) -> None:
        """PNGs of the first `num_overlays` evaluation images of process 0 (its rows come first
        in the global batch: the mesh orders devices by process)."""
        drawn = 0
        for local, batch in self._batches():
            if drawn >= self._num_overlays:
                break
            out = self._overlay_step(student_lora, teacher_lora, frozen, batch)
            keep = slice(0, min(len(local["image_id"]), self._num_overlays - drawn))
            out = {name: np.asarray(value)[keep] for name, value in out.items()}
            if jax.process_index() == 0:
                reporting.write_overlays(
                    self._workdir / "overlays" / f"step_{step}",
                    local["weak_image"][keep],
                    local["image_id"][keep],
                    {
                        "ground truth": (local["masks"][keep], local["instance_valid"][keep]),
                        "prediction": (out["prediction"], local["instance_valid"][keep]),
                        "pseudo-label": (out["pseudo_label"], out["pseudo_valid"]),
                    },
                )
            drawn += keep.stop


# --------------------------------------------------------------------------- the run


def record_config(config: ml_collections.ConfigDict, workdir: Path, resuming: bool) -> None:
    """Writes the resolved config to WORKDIR/config.json. A resumed run compares it with the
    saved one first: a changed field that alters training or evaluation is an error naming the
    field; one that does not (reporting.RESUMABLE_FIELDS: logging, checkpoint cadence, paths)
    is a warning."""
    path = workdir / "config.json"
    if resuming and path.exists():
        changes = reporting.config_changes(path, config.to_dict())
        fatal = [c for c in changes if c[0] not in reporting.RESUMABLE_FIELDS]
        if fatal:
            listed = "; ".join(f"{name}: {old!r} -> {new!r}" for name, old, new in fatal)
            raise RunError(
                f"{workdir} holds a checkpoint of a run with another configuration ({listed}). "
                "Resume with the saved values (config.json there) or use a new --workdir."
            )
        for name, old, new in changes:
            logging.warning("resuming with %s changed from %r to %r", name, old, new)
    if jax.process_index() == 0:
        path.write_text(json.dumps(reporting.flat_config(config.to_dict()), indent=1) + "\n")


def _mean_metrics(history: list[Mapping[str, jax.Array]]) -> dict[str, float]:
    """Means over the steps since the last log line (one host sync per log line)."""
    fetched = jax.device_get(history)
    return {
        name: float(np.mean([np.asarray(m[name], np.float64) for m in fetched]))
        for name in fetched[0]
    }


def _log_evaluation(writer, rows, step: int, label: str, scores: Mapping[str, float]) -> None:
    rows.append((label, scores))
    writer.write(step, "eval", scores, label=label)
    logging.info(
        "eval %s: %s",
        label,
        " ".join(f"{k} {v:.4f}" for k, v in scores.items() if k not in ("images", "prompt_seeds")),
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Runs config in workdir (resuming if it holds a checkpoint).

    Returns:
        {"steps": steps done, "preempted": bool, "evaluations": [(label, scores), ...] (with
         train.compare_with_supervised, the supervised run's last row at the end),
         "lora": the final LoRA parameters (replicated arrays)}.
    """
    workdir = Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if config.method.mode not in MODES:
        raise RunError(f"config.method.mode={config.method.mode!r}; expected one of {MODES}")
    mesh = parallel.data_mesh()
    logging.info(
        "%d process(es), %d device(s) (%s); global batch %d",
        jax.process_count(), jax.device_count(), jax.default_backend(), config.data.batch_size,
    )  # fmt: skip

    data_dir, manual_dir = data_paths(config, workdir)
    try:
        data_config = host_data_config(config, data_dir)
    except ValueError as e:  # per_host_batch_size
        raise RunError(str(e)) from None
    ensure_dataset(config, data_dir, manual_dir)
    model = build_model(config)
    sam: SamConfig = model.config
    graphdef, lora, frozen = split_model(model)
    frozen = parallel.replicate(frozen, mesh)

    checkpoints = None
    if config.method.mode != "direct":
        checkpoints = checkpointing.TrainCheckpoints(
            workdir / "checkpoints", config.train.keep_checkpoints
        )
    resume_step = checkpoints.latest_step() if checkpoints else None
    record_config(config, workdir, resuming=resume_step is not None)
    writer = reporting.MetricWriter(
        workdir, enabled=jax.process_index() == 0, resume_step=resume_step
    )
    writer.write_config(config.to_dict())
    evaluator = Evaluator(graphdef, config, data_config, mesh, workdir)
    rows: list[tuple[str, dict[str, float]]] = []
    if config.method.mode == "direct":
        lora = parallel.replicate(lora, mesh)
        _log_evaluation(writer, rows, 0, "Direct SAM", evaluator.scores(lora, frozen))
        evaluator.overlays(0, lora, lora, frozen)
        writer.close()
        logging.info("\n%s", reporting.evaluation_table(rows))
        return {"steps": 0, "preempted": False, "evaluations": rows, "lora": lora}

    train_split = config.data.train_split
    steps_per_epoch = train_steps_per_epoch(data_config, train_split)
    total_steps = config.train.max_steps or config.train.num_epochs * steps_per_epoch
    train_iterator = iter(
        pipeline.make_dataset(data_config, train_split, train=True, seed=config.seed)
    )
    state = parallel.replicate(create_train_state(lora, sam.prompt_embed_dim, config), mesh)
    if resume_step is not None:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        state = checkpoints.restore(abstract, train_iterator)
        logging.info("resumed from %s at step %d", workdir / "checkpoints", int(state.step))
    first_step = int(state.step)

    rep, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    train_step = jax.jit(
        make_train_step(graphdef, config, steps_per_epoch),
        in_shardings=(rep, rep, sharded),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )

    def teacher(state):
        return state.teacher_lora if state.teacher_lora is not None else state.lora

    if first_step == 0 and config.train.eval_before_training:
        # LoRA B is zero at step 0, so this is SAM as it is: the Direct SAM row.
        _log_evaluation(
            writer, rows, 0, "Direct SAM (step 0)", evaluator.scores(state.lora, frozen)
        )
        evaluator.overlays(0, state.lora, teacher(state), frozen)

    logging.info(
        "%s training: %d steps (%d per epoch), from step %d", config.method.mode, total_steps,
        steps_per_epoch, first_step,
    )  # fmt: skip
    progress = reporting.Progress(first_step, total_steps)
    preemption = checkpointing.PreemptionWatch()
    history: list[dict[str, jax.Array]] = []
    epoch_diagnostics: list[dict[str, jax.Array]] = []  # pseudo-label quality, whole epoch
    diagnostic_rows: list[tuple[str, dict[str, float]]] = []
    preempted = False
    step = first_step
    while step < total_steps:
        epoch = step // steps_per_epoch + 1
        batch = parallel.global_batch(next(train_iterator), mesh)
        state, metrics = train_step(state, frozen, batch)
        history.append(metrics)
        if config.method.mode == "resam":
            epoch_diagnostics.append({k: metrics[k] for k in reporting.PSEUDO_LABEL_DIAGNOSTICS})
        step += 1
        if step == first_step + 1:
            progress.start()
        if step % config.train.log_every_steps == 0 or step == total_steps:
            means = _mean_metrics(history)
            history.clear()
            writer.write(step, "train", means)
            logging.info(progress.line(step, epoch, means))
        epoch_end = step % steps_per_epoch == 0 or step == total_steps
        if epoch_end and epoch_diagnostics:  # (after a resume: the steps since the resume)
            diagnostics = _mean_metrics(epoch_diagnostics)
            label = f"epoch {epoch} (step {step})"
            writer.write(step, "pseudo_labels", diagnostics, label=label)
            diagnostic_rows.append((label, diagnostics))
        if epoch_end:
            epoch_diagnostics.clear()
        if step % config.train.checkpoint_every_steps == 0 or epoch_end:
            checkpoints.save(step, state, train_iterator)
        if epoch_end and (epoch % config.train.eval_every_epochs == 0 or step == total_steps):
            label = f"{config.method.mode} epoch {epoch} (step {step})"
            _log_evaluation(writer, rows, step, label, evaluator.scores(state.lora, frozen))
            evaluator.overlays(step, state.lora, teacher(state), frozen)
        if step < total_steps and preemption.should_stop(step):
            checkpoints.save(step, state, train_iterator)
            logging.warning(
                "stopped at step %d by SIGTERM; checkpoint saved. Run the same command to resume.",
                step,
            )
            preempted = True
            break
    checkpoints.close()
    preemption.close()

    if not preempted:
        source = {"path": config.model.checkpoint or "random init", "resam_step": step}
        checkpointing.export_lora(workdir / "export" / "lora", state.lora)
        checkpointing.export_merged_sam(
            workdir / "export" / "sam_merged", state.lora, frozen, sam, source
        )
        logging.info(
            "exported %s and %s", workdir / "export" / "lora", workdir / "export" / "sam_merged"
        )
    # The tables cover the whole run, a resumed run's earlier rows included (from the log).
    diagnostic_rows = writer.rows("pseudo_labels") or diagnostic_rows
    rows = writer.rows("eval") or rows
    writer.close()
    if (
        config.train.compare_with_supervised
        and config.method.mode != "supervised"
        and not preempted
    ):
        # The Supervised row: the same run on the GT masks, in its own workdir.
        supervised = config.copy_and_resolve_references()
        supervised.method.mode = "supervised"
        supervised.train.update(compare_with_supervised=False, eval_before_training=False)
        supervised.data.update(data_dir=str(data_dir), manual_dir=str(manual_dir or ""))
        rows.append(train_and_evaluate(supervised, workdir / "supervised")["evaluations"][-1])
    if diagnostic_rows:
        logging.info("\n%s", reporting.diagnostics_table(diagnostic_rows))
    if rows:
        logging.info("\n%s", reporting.evaluation_table(rows))
    return {
        "steps": step,
        "preempted": preempted,
        "evaluations": rows,
        "pseudo_labels": diagnostic_rows,
        "lora": state.lora,
    }
