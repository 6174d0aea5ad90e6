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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from resam_jax import parallel
from resam_jax.config import base_config
from resam_jax.data import pipeline
from resam_jax.model import SamConfig
from resam_jax.run import checkpoints as checkpointing
from resam_jax.run import reporting
from resam_jax.run.evaluator import Evaluator
from resam_jax.run.setup import (
    RunError,
    build_model,
    data_paths,
    ensure_dataset,
    host_data_config,
    train_steps_per_epoch,
)
from resam_jax.train_state import TRAIN_MODES, create_train_state, split_model
from resam_jax.train_step import make_train_step

MODES = (*TRAIN_MODES, "direct")


def record_config(config: ml_collections.ConfigDict, workdir: Path, resuming: bool) -> None:
    """Writes the resolved config to WORKDIR/config.json. A resumed run compares it with the
    saved one first: a changed field that alters training or evaluation is an error naming the
    field; one that does not (reporting.RESUMABLE_FIELDS: logging, checkpoint cadence, paths)
    is a warning."""
    path = workdir / "config.json"
    if resuming and path.exists():
        defaults = reporting.flat_config(base_config().to_dict())
        changes = reporting.config_changes(path, config.to_dict(), defaults)
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
