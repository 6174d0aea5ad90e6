"""The run: evaluation of SAM as it is, ReSAM (or supervised) training, evaluation, exports.

    train_and_evaluate(config, workdir)      # configs/*.py, usually through resam_jax.main

Data parallel over every device of every process (resam_jax.parallel): each process loads its
own shard of the data, the global batch is sharded along the ("data",) mesh axis, the train
state and the frozen SAM weights are replicated, and the steps are jitted with those shardings.
A workdir holding a checkpoint resumes from it; SIGTERM checkpoints and stops.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from resam_jax import models, parallel
from resam_jax.config import base_config
from resam_jax.data import pipeline
from resam_jax.method.train_state import create_train_state, split_model
from resam_jax.method.train_step import make_train_step
from resam_jax.run import checkpoints as checkpointing
from resam_jax.run import reporting
from resam_jax.run.evaluator import Evaluator
from resam_jax.run.setup import MODES, RunError, prepare, train_steps_per_epoch

__all__ = ["MODES", "train_and_evaluate"]


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


@dataclasses.dataclass
class _Run:
    """What the phases of one run share: where it writes, how it evaluates, what it has
    evaluated so far."""

    config: ml_collections.ConfigDict
    workdir: Path
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    frozen: nnx.State  # the frozen SAM weights, replicated
    evaluator: Evaluator
    writer: reporting.MetricWriter
    rows: list[tuple[str, dict[str, float]]] = dataclasses.field(default_factory=list)

    def evaluate(self, step: int, label: str, student_lora, teacher_lora) -> None:
        """Scores the student on the evaluation split, logs them, draws the overlays."""
        scores = self.evaluator.scores(student_lora, self.frozen)
        self.rows.append((label, scores))
        self.writer.write(step, "eval", scores, label=label)
        shown = " ".join(
            f"{k} {v:.4f}" for k, v in scores.items() if k not in ("images", "prompt_seeds")
        )
        logging.info("eval %s: %s", label, shown)
        self.evaluator.overlays(step, student_lora, teacher_lora, self.frozen)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Runs config in workdir (resuming if it holds a checkpoint).

    Returns:
        {"steps": steps done, "preempted": bool, "evaluations": [(label, scores), ...] (then
         the last row of each train.compare_variants run, then with
         train.compare_with_supervised the supervised run's last row),
         "pseudo_labels": [(epoch label, diagnostics), ...] (ReSAM),
         "lora": the final LoRA parameters (replicated arrays)}.
    """
    mode = config.method.mode
    mesh = parallel.data_mesh()
    logging.info(
        "%d process(es), %d device(s) (%s); global batch %d",
        jax.process_count(), jax.device_count(), jax.default_backend(), config.data.batch_size,
    )  # fmt: skip
    prepared = prepare(config, workdir)
    model, data_config, workdir = prepared.model, prepared.data_config, prepared.workdir
    data_dir, manual_dir = prepared.data_dir, prepared.manual_dir
    graphdef, initial_lora, frozen = split_model(model)

    checkpoints = None
    if mode != "direct":
        checkpoints = checkpointing.TrainCheckpoints(
            workdir / "checkpoints", config.train.keep_checkpoints
        )
    resume_step = checkpoints.latest_step() if checkpoints else None
    record_config(config, workdir, resuming=resume_step is not None)
    writer = reporting.MetricWriter(
        workdir, enabled=jax.process_index() == 0, resume_step=resume_step
    )
    writer.write_config(config.to_dict())
    run = _Run(
        config, workdir, mesh, graphdef, parallel.replicate(frozen, mesh),
        Evaluator(graphdef, config, data_config, mesh, workdir), writer,
    )  # fmt: skip

    if mode == "direct":
        lora = parallel.replicate(initial_lora, mesh)
        run.evaluate(0, "Direct SAM", lora, lora)
        writer.close()
        return {"steps": 0, "preempted": False, "evaluations": run.rows, "lora": lora}

    state = parallel.replicate(create_train_state(initial_lora, model.feature_dim, config), mesh)
    state, diagnostic_rows, preempted = _train(run, state, data_config, checkpoints, resume_step)
    if not preempted:
        _export(run, state)
    # The tables cover the whole run, a resumed run's earlier rows included (from the log).
    diagnostic_rows = writer.rows("pseudo_labels") or diagnostic_rows
    rows = writer.rows("eval") or run.rows
    writer.close()
    if mode == "resam" and not preempted:
        # The other variants' rows: the same run with another method.variant, in its workdir.
        for variant in config.train.compare_variants:
            other = config.copy_and_resolve_references()
            other.method.variant = variant
            other.train.update(
                compare_variants=(), compare_with_supervised=False, eval_before_training=False
            )
            other.data.update(data_dir=str(data_dir), manual_dir=str(manual_dir or ""))
            other_run = train_and_evaluate(other, workdir / variant)
            preempted = other_run["preempted"]  # the same command resumes it
            if preempted:
                break
            rows.append(other_run["evaluations"][-1])
    if config.train.compare_with_supervised and mode != "supervised" and not preempted:
        # The Supervised row: the same run on the GT masks, in its own workdir.
        supervised = config.copy_and_resolve_references()
        supervised.method.mode = "supervised"
        supervised.train.update(
            compare_variants=(), compare_with_supervised=False, eval_before_training=False
        )
        supervised.data.update(data_dir=str(data_dir), manual_dir=str(manual_dir or ""))
        supervised_run = train_and_evaluate(supervised, workdir / "supervised")
        preempted = supervised_run["preempted"]  # the same command resumes it
        if not preempted:
            rows.append(supervised_run["evaluations"][-1])
    if diagnostic_rows:
        logging.info("\n%s", reporting.diagnostics_table(diagnostic_rows))
    return {
        "steps": int(state.step),
        "preempted": preempted,
        "evaluations": rows,
        "pseudo_labels": diagnostic_rows,
        "lora": state.lora,
    }


def _train(run: _Run, state, data_config, checkpoints, resume_step: int | None):
    """The training loop, from the checkpoint at resume_step if any: logs every
    train.log_every_steps, pseudo-label diagnostics per epoch, checkpoints, evaluations;
    SIGTERM saves and stops. Returns (state, diagnostic rows, preempted)."""
    config, mode = run.config, run.config.method.mode
    # The row's name: the mode, and a ReSAM variant other than the default.
    variant = config.method.variant
    name = f"{mode} {variant}" if mode == "resam" and variant != "v1" else mode
    train_split = config.data.train_split
    steps_per_epoch = train_steps_per_epoch(data_config, train_split)
    total_steps = config.train.max_steps or config.train.num_epochs * steps_per_epoch
    train_iterator = iter(
        pipeline.make_dataset(data_config, train_split, train=True, seed=config.seed)
    )
    if resume_step is not None:
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        state = checkpoints.restore(abstract, train_iterator)
        logging.info("resumed from %s at step %d", run.workdir / "checkpoints", int(state.step))
    first_step = int(state.step)

    rep, sharded = parallel.replicated(run.mesh), parallel.batch_sharded(run.mesh)
    train_step = jax.jit(
        make_train_step(run.graphdef, config, steps_per_epoch),  # its fields: setup.check_config
        in_shardings=(rep, rep, sharded),
        out_shardings=(rep, rep),
        donate_argnums=0,
    )

    def teacher(state):
        return state.teacher_lora if state.teacher_lora is not None else state.lora

    if first_step == 0 and config.train.eval_before_training:
        # LoRA B is zero at step 0, so this is SAM as it is: the Direct SAM row.
        run.evaluate(0, "Direct SAM (step 0)", state.lora, teacher(state))

    logging.info(
        "%s training: %d steps (%d per epoch), from step %d", mode, total_steps,
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
        batch = parallel.global_batch(next(train_iterator), run.mesh)
        state, metrics = train_step(state, run.frozen, batch)
        history.append(metrics)
        if mode == "resam":
            epoch_diagnostics.append({k: metrics[k] for k in reporting.PSEUDO_LABEL_DIAGNOSTICS})
        step += 1
        if step == first_step + 1:
            progress.start()
        if step % config.train.log_every_steps == 0 or step == total_steps:
            means = _mean_metrics(history)
            history.clear()
            run.writer.write(step, "train", means)
            logging.info(progress.line(step, epoch, means))
        epoch_end = step % steps_per_epoch == 0 or step == total_steps
        if epoch_end and epoch_diagnostics:
            diagnostics = _mean_metrics(epoch_diagnostics)
            label = f"epoch {epoch} (step {step})"
            first_counted = step - len(epoch_diagnostics) + 1
            if first_counted > (epoch - 1) * steps_per_epoch + 1:  # resumed within the epoch
                label = f"epoch {epoch} (step {step}, resumed: steps {first_counted}-{step} only)"
            run.writer.write(step, "pseudo_labels", diagnostics, label=label)
            diagnostic_rows.append((label, diagnostics))
        if epoch_end:
            epoch_diagnostics.clear()
        if epoch_end and (epoch % config.train.eval_every_epochs == 0 or step == total_steps):
            run.evaluate(step, f"{name} epoch {epoch} (step {step})", state.lora, teacher(state))
        # Saved after the evaluation: a run killed during it resumes from an earlier checkpoint
        # and evaluates again, where a checkpoint at the last step would resume to no steps and
        # no final row (the epoch before's row would stand in for it).
        if step % config.train.checkpoint_every_steps == 0 or epoch_end:
            checkpoints.save(step, state, train_iterator)
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
    return state, diagnostic_rows, preempted


def _export(run: _Run, state) -> None:
    """WORKDIR/export/lora (the LoRA alone) and export/sam_merged (SAM with it folded in)."""
    config = run.config
    # The pixel input the weights were adapted to: what predict and export_sam read.
    source = {
        "path": config.model.checkpoint or "random init",
        "resam_step": int(state.step),
        "pixel_norm": config.model.pixel_norm,
    }
    export = run.workdir / "export"
    checkpointing.export_lora(export / "lora", state.lora)
    adapted = nnx.merge(run.graphdef, state.lora, run.frozen)
    models.export_merged(config, adapted, export / "sam_merged", source)
    logging.info("exported %s and %s", export / "lora", export / "sam_merged")
