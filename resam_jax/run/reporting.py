"""What a user sees of a run: the progress line, metric files, the evaluation table, overlays.

    WORKDIR/config.json         the resolved configuration of the run (also TensorBoard hparams)
    WORKDIR/metrics.jsonl       one JSON object per line: {"step", "kind", ...}; kind "train",
                                "eval" (with its "label") or "pseudo_labels"
    WORKDIR/tensorboard/        TensorBoard event files (tensorboardX; TensorFlow not needed)
    WORKDIR/overlays/<step>/    PNGs of validation images: GT | prediction | pseudo-label

Only process 0 writes; the others get writers that do nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from resam_jax.method.metrics import SCORE_NAMES
from resam_jax.visualize import tint_instances


class _LibraryInfoFilter(logging.Filter):
    """Drops the INFO chatter of orbax and grain (several lines per checkpoint); unless verbose,
    every library's INFO (TFDS's "Load dataset info", JAX's missing libtpu) and TFDS's warnings
    too, keeping the run's own lines."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def filter(self, record: logging.LogRecord) -> bool:
        if self.verbose:
            noisy = "/orbax/" in record.pathname or "/grain/" in record.pathname
            return record.levelno >= logging.WARNING or not noisy
        if "/tensorflow_datasets/" in record.pathname:
            return record.levelno >= logging.ERROR
        return record.levelno >= logging.WARNING or "/resam_jax/" in record.pathname


_verbose = False


def quiet_library_logs(verbose: bool = False) -> None:
    global _verbose
    _verbose = verbose
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(_LibraryInfoFilter(verbose))


def library_prints() -> contextlib.AbstractContextManager:
    """Swallows what libraries print (TFDS's "Downloading and preparing dataset") unless the
    run is verbose."""
    if _verbose:
        return contextlib.nullcontext()
    sink = io.StringIO()
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(sink))
    stack.enter_context(contextlib.redirect_stderr(sink))
    return stack


# Fields that change neither what is trained nor what is evaluated: a resumed run may change them
# (with a warning). Any other change on resume is an error.
RESUMABLE_FIELDS = frozenset(
    {
        # how the encoder is computed, not what (docs/method.md section 2, Memory options)
        "model.attention",
        "model.attention_chunk_size",
        "model.remat",
        "data.data_dir",
        "data.manual_dir",
        "data.prefetch_batches",
        "data.read_threads",
        "data.worker_count",
        "train.checkpoint_every_steps",
        "train.eval_before_training",
        "train.eval_every_epochs",
        "train.keep_checkpoints",
        "train.log_every_steps",
        "train.max_steps",
        "train.num_overlays",
    }
)


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a.b": value} of a (nested) config, tuples as lists: what config.json holds."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def config_changes(
    path: Path, config: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> list[tuple[str, Any, Any]]:
    """(field, saved, current) for every field that differs from the config.json at `path`.
    A field the saved file lacks (a run from before the field existed) counts as its value
    in `defaults` (flat), if given."""
    saved = json.loads(path.read_text())
    if defaults:
        saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    current = flat_config(config)
    missing = object()
    return [
        (name, saved.get(name, missing), current.get(name, missing))
        for name in sorted(saved.keys() | current.keys())
        if saved.get(name, missing) != current.get(name, missing)
    ]


class MetricWriter:
    """Scalars to metrics.jsonl and TensorBoard (under a `kind/` prefix).

    A resumed run passes `resume_step`: the rows logged after that step by the interrupted run
    (steps that will run again) are dropped from metrics.jsonl, and TensorBoard purges them.
    """

    def __init__(self, workdir: str | Path, enabled: bool = True, resume_step: int | None = None):
        self._enabled = enabled
        if not enabled:
            return
        from tensorboardX import SummaryWriter

        self._path = Path(workdir) / "metrics.jsonl"
        if resume_step is not None and self._path.exists():
            kept = [
                line
                for line in self._path.read_text().splitlines()
                if json.loads(line)["step"] <= resume_step
            ]
            self._path.write_text("".join(line + "\n" for line in kept))
        self._jsonl = open(self._path, "a")
        purge = None if resume_step is None else resume_step + 1
        self._tensorboard = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=purge)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """The resolved configuration as TensorBoard hparams (config.json is written by the run)."""
        if not self._enabled:
            return
        from tensorboardX.summary import hparams

        values = {
            k: v if isinstance(v, bool | int | float | str) else json.dumps(v)
            for k, v in flat_config(config).items()
        }
        for summary in hparams(values, {}):
            self._tensorboard.file_writer.add_summary(summary)

    def write(
        self, step: int, kind: str, scalars: Mapping[str, float], label: str | None = None
    ) -> None:
        if not self._enabled:
            return
        scalars = {name: float(value) for name, value in scalars.items()}
        record = {"step": step, "kind": kind, **({"label": label} if label else {}), **scalars}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tensorboard.add_scalar(f"{kind}/{name}", value, step)
        self._tensorboard.flush()

    def rows(self, kind: str) -> list[tuple[str, dict[str, float]]]:
        """(label, scalars) of every `kind` row in metrics.jsonl, a resumed run's earlier ones
        included: what the final tables are built from."""
        if not self._enabled:
            return []
        rows = []
        for line in self._path.read_text().splitlines():
            record = json.loads(line)
            if record.pop("kind") == kind:
                step = record.pop("step")
                rows.append((record.pop("label", f"step {step}"), record))
        return rows

    def close(self) -> None:
        if self._enabled:
            self._jsonl.close()
            self._tensorboard.close()


class Progress:
    """steps/s and ETA over the steps run in this process (a resumed run starts afresh)."""

    def __init__(self, first_step: int, total_steps: int):
        self._first_step = first_step
        self._total_steps = total_steps
        self._start = None

    def start(self) -> None:
        """Call after the first step: compilation is not part of the speed."""
        self._start = time.perf_counter()

    def line(self, step: int, epoch: int, metrics: Mapping[str, float]) -> str:
        done = step - self._first_step - 1  # steps since start(), which came after the first
        rate = float("nan")
        if self._start is not None and done > 0:
            rate = done / max(time.perf_counter() - self._start, 1e-9)
        remaining = self._total_steps - step
        eta = str(datetime.timedelta(seconds=round(remaining / rate))) if rate > 0 else "?"
        parts = " ".join(
            f"{name} {metrics[name]:.4f}"
            for name in ("focal", "bce", "dice", "iou", "ssa")
            if name in metrics
        )
        return (
            f"step {step}/{self._total_steps} epoch {epoch} | loss {metrics['loss']:.4f} ({parts})"
            f" | skipped {metrics.get('skipped', 0):.2f} | {rate:.2f} steps/s | ETA {eta}"
        )


# Per-step pseudo-label quality of a ReSAM step (resam_jax.method.train_step), averaged per epoch.
PSEUDO_LABEL_DIAGNOSTICS = {
    "teacher_point_iou": "teacher point IoU",
    "refined_iou": "refined IoU",
    "target_iou": "pseudo-label IoU",
    "pseudo_label_kept_fraction": "kept",
}


def diagnostics_table(rows: Sequence[tuple[str, Mapping[str, float]]]) -> str:
    """Per-epoch pseudo-label quality against the GT masks (never trained on), in percent:
    the teacher's point-prompted masks, Refine's masks, the training targets (Requery's masks,
    or the refined ones in the Refine-only ablation), and the share of instances kept."""
    names = list(PSEUDO_LABEL_DIAGNOSTICS.values())
    header = f"{'pseudo-labels vs GT':<28}" + "".join(f"{n:>19}" for n in names)
    lines = [header, "-" * len(header)]
    for label, values in rows:
        cells = "".join(f"{100 * values[key]:>19.2f}" for key in PSEUDO_LABEL_DIAGNOSTICS)
        lines.append(f"{label:<28}{cells}")
    return "\n".join(lines)


def evaluation_table(rows: Sequence[tuple[str, Mapping[str, float]]]) -> str:
    """Rows (label, {iou, f1, ..., images} and optionally {iou_std, ..., prompt_seeds}) as an
    aligned text table in percent; "mean ± std" over prompt draws where there were several."""
    draws = max(int(scores.get("prompt_seeds", 1)) for _, scores in rows)
    width = 16 if draws > 1 else 11

    def cell(scores, name):
        if draws > 1:
            return f"{100 * scores[name]:.2f} ± {100 * scores.get(name + '_std', 0.0):.2f}"
        return f"{100 * scores[name]:.2f}"

    header = f"{'evaluation':<32}{'images':>8}" + "".join(f"{n:>{width}}" for n in SCORE_NAMES)
    lines = [header, "-" * len(header)]
    for label, scores in rows:
        lines.append(
            f"{label:<32}{int(scores['images']):>8}"
            + "".join(f"{cell(scores, name):>{width}}" for name in SCORE_NAMES)
        )
    if draws > 1:
        lines.append(f"(mean ± standard deviation over {draws} prompt draws)")
    return "\n".join(lines)


def _draw_instances(
    image: np.ndarray, masks: np.ndarray, valid: np.ndarray, title: str
) -> Image.Image:
    panel = Image.fromarray(tint_instances(image, masks, np.flatnonzero(valid)))
    ImageDraw.Draw(panel).text((3, 2), title, fill=(255, 255, 255))
    return panel


def write_overlays(
    directory: str | Path,
    images: np.ndarray,
    image_ids: np.ndarray,
    panels: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> list[Path]:
    """One PNG per image: the image with each panel's instance masks drawn side by side.

    Args:
        images: uint8 [B, S, S, 3] (the weak view).
        image_ids: int [B]; ids < 0 are batch padding and are skipped.
        panels: title -> (masks bool [B, N, S, S], valid bool [B, N]).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for b, image_id in enumerate(image_ids):
        if image_id < 0:
            continue
        drawn = [_draw_instances(images[b], m[b], v[b], title) for title, (m, v) in panels.items()]
        row = Image.new("RGB", (sum(p.width for p in drawn), drawn[0].height))
        for i, panel in enumerate(drawn):
            row.paste(panel, (i * panel.width, 0))
        path = directory / f"image_{int(image_id)}.png"
        row.save(path)
        written.append(path)
    logging.info("wrote %d overlays to %s", len(written), directory)
    return written
