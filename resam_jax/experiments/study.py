r"""The adaptation study: every row of the paper's table, clean and under corruptions.

    python -m resam_jax.study --config configs/study_nwpu.py --workdir runs/study \
        [--rows direct,resam,...] [--corruptions clean,gaussian_noise,...] [--config.a.b=value ...]

For each corruption (ImageNet-C at config.data.corruption_severity, or at the severity a
"name:severity" entry names, e.g. gaussian_noise:5; or "clean") and each row, one run of
resam_jax.run.train_and_evaluate in WORKDIR/<corruption>/<row> (<corruption> "name-severity"
for a "name:severity" entry), with the row's
overrides on top of --config (ROWS below). A finished row leaves a `result.json` and is not run
again; an interrupted one resumes from its checkpoint: the same command picks the study up
where it stopped. At the end (and after every row) the study writes

    WORKDIR/results.json   per corruption and row: final scores (mean and _std over the prompt
                           draws), the per-epoch IoU, the pseudo-label diagnostics, wall time
    WORKDIR/results.md     one table per corruption: IoU/F1/precision/recall, mean ± std
    WORKDIR/iou_per_epoch.png   IoU on the evaluation split after every epoch, one panel per
                           corruption, one line per row (Direct SAM as a flat reference)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from absl import app, flags, logging

from resam_jax.data.corruptions import CORRUPTIONS, SEVERITIES
from resam_jax.experiments.gates import headroom_gates
from resam_jax.method.metrics import SCORE_NAMES
from resam_jax.run import cli  # --config, --workdir and the multi-host flags

# The paper's rows and its ablation (docs/method.md section 4.7), as overrides of the config.
ROWS: dict[str, dict[str, Any]] = {
    "direct": {"method.mode": "direct"},
    "refine_only": {"method.requery": False, "method.ssa_max_weight": 0.0},
    "refine_requery": {"method.ssa_max_weight": 0.0},
    "resam": {},
    "resam_camera": {"method.variant": "camera"},  # docs/method.md section 10
    "resam_ema": {"method.ema_rate": 0.99},
    "supervised": {"method.mode": "supervised"},
}
LABELS = {
    "direct": "Direct SAM",
    "refine_only": "Refine only",
    "refine_requery": "Refine + Requery",
    "resam": "ReSAM (Refine + Requery + SSA)",
    "resam_camera": "ReSAM (camera)",
    "resam_ema": "ReSAM, EMA teacher 0.99",
    "supervised": "Supervised (GT masks)",
}
CLEAN = "clean"

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The study's own flags, defined only when it runs as a program: importing this module
    next to resam_jax.experiments.robustness (which has a --corruptions flag too) must not clash."""
    flags.DEFINE_string("rows", ",".join(ROWS), "comma-separated rows to run")
    flags.DEFINE_string(
        "corruptions", CLEAN, "comma-separated: 'clean' and/or ImageNet-C corruption names"
    )


def parse_names(text: str, known: list[str] | tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or (unknown := [n for n in names if n not in known]):
        raise ValueError(
            f"--{what}={text!r}: unknown {', '.join(unknown) if names else 'empty list'}; "
            f"expected some of: {', '.join(known)}"
        )
    return names


def parse_corruptions(text: str) -> list[str]:
    """Entries of --corruptions: "clean", a corruption name, or "name:severity" (severity 1-5)."""
    entries = [n.strip() for n in text.split(",") if n.strip()]
    bad = []
    for entry in entries:
        name, colon, severity = entry.partition(":")
        if name == CLEAN and not colon:
            continue
        if name not in CORRUPTIONS or (colon and severity not in map(str, SEVERITIES)):
            bad.append(entry)
    if not entries or bad:
        raise ValueError(
            f"--corruptions={text!r}: unknown {', '.join(bad) if entries else 'empty list'}; "
            f"expected 'clean' or ImageNet-C names ({', '.join(CORRUPTIONS)}), each optionally "
            f"with ':severity', severity in {SEVERITIES[0]}-{SEVERITIES[-1]}"
        )
    return entries


def corruption_dir(corruption: str) -> str:
    """The study's folder for a --corruptions entry: fog, or fog-4 for fog:4."""
    return corruption.replace(":", "-")


def row_config(config, row: str, corruption: str):
    """config with the row's overrides and the corruption (a copy; config is untouched)."""
    config = config.copy_and_resolve_references()
    name, _, severity = corruption.partition(":")
    with config.unlocked():
        for dotted, value in ROWS[row].items():
            section, field = dotted.split(".")
            config[section][field] = value
        config.data.corruption = "" if name == CLEAN else name
        if severity:
            config.data.corruption_severity = int(severity)
        config.train.compare_variants = ()  # each variant is a row of its own (resam_camera)
    return config


def run_row(config, workdir: Path) -> dict[str, Any]:
    """One row, or its saved result if it finished before."""
    from resam_jax.run import train_and_evaluate

    done = workdir / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    start = time.perf_counter()
    result = train_and_evaluate(config, workdir)
    if result["preempted"]:
        raise KeyboardInterrupt("preempted (SIGTERM); run the same command to resume")
    label, final = result["evaluations"][-1]
    record = {
        "final": final,
        "label": label,
        "steps": result["steps"],
        "iou_per_epoch": [(lab, scores["iou"]) for lab, scores in result["evaluations"]],
        "pseudo_labels": result.get("pseudo_labels", []),
        "seconds": time.perf_counter() - start,
    }
    done.write_text(json.dumps(record, indent=1) + "\n")
    return record


def markdown(results: dict[str, dict[str, Any]], config) -> str:
    draws = config.eval.prompt_seeds
    lines = [
        f"Study on {config.data.dataset} ({config.data.eval_split}), "
        f"model {config.model.model_type} from {config.model.checkpoint or 'random init'}; "
        f"percent, mean ± std over {draws} prompt draw(s); ImageNet-C severity "
        f"{config.data.corruption_severity} unless an entry names its own (name:severity).",
    ]
    for corruption, rows in results.items():
        lines += [
            "",
            f"### {corruption}",
            "",
            "| row | " + " | ".join(SCORE_NAMES) + " | minutes |",
            "|---|" + "---:|" * (len(SCORE_NAMES) + 1),
        ]
        for row, record in rows.items():
            final = record["final"]
            cells = [f"{100 * final[n]:.2f} ± {100 * final[n + '_std']:.2f}" for n in SCORE_NAMES]
            minutes = f"{record['seconds'] / 60:.1f}"
            lines.append(f"| {LABELS[row]} | " + " | ".join(cells) + f" | {minutes} |")
        lines += ["", *(gate.line() for gate in headroom_gates({corruption: rows}))]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[str, Any]], path: Path, columns: int = 3) -> None:
    """figure(results, columns) saved as a PNG at path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = figure(results, columns)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(results: dict[str, dict[str, Any]], columns: int = 3):
    """IoU after every epoch (x: epoch, 0 = the source model as the Direct SAM row scored it),
    one panel per corruption (`columns` to a line); Direct SAM as a dashed horizontal line. A
    row keeps its colour in every panel and the legend names every row drawn."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colours = {row: f"C{i}" for i, row in enumerate(r for r in ROWS if r != "direct")}
    ncols = min(columns, len(results))
    nrows = -(-len(results) // ncols)  # ceil
    fig, axes = plt.subplots(
        nrows, ncols, squeeze=False, sharey=True, figsize=(4.5 * ncols, 3.6 * nrows)
    )
    handles: dict[str, Any] = {}
    for axis, (corruption, rows) in zip(axes.flat, results.items(), strict=False):
        direct = rows.get("direct")
        for row, record in rows.items():
            values = [100 * iou for _, iou in record["iou_per_epoch"]]
            if row == "direct":
                handles[row] = axis.axhline(values[-1], color="grey", linestyle="--")
                continue
            # A row trained with train.eval_before_training=False starts from the source model,
            # which the Direct SAM row scored: that is its point 0.
            first = 0 if record["iou_per_epoch"][0][0].startswith("Direct") else 1
            if first == 1 and direct is not None:
                first, values = 0, [100 * direct["iou_per_epoch"][-1][1], *values]
            epochs = range(first, first + len(values))
            (handles[row],) = axis.plot(epochs, values, marker="o", color=colours[row])
        axis.set_title(corruption)
        axis.set_xlabel("epoch (0 = the source model)")
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    for axis in axes.flat[len(results) :]:
        axis.set_visible(False)
    for axis in axes[:, 0]:
        axis.set_ylabel("IoU (%)")
    order = [row for row in ROWS if row in handles]
    fig.legend(
        [handles[r] for r in order], [LABELS[r] for r in order], loc="lower center",
        ncol=min(len(order), 3), fontsize=8, frameon=False,
    )  # fmt: skip
    fig.tight_layout(rect=(0, 0.5 / fig.get_figheight(), 1, 1))  # room for the legend
    return fig


def study(config, workdir: str | Path, rows: list[str], corruptions: list[str]) -> dict:
    workdir = Path(workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for corruption in corruptions:
        for row in rows:
            logging.info("study: %s / %s", corruption, row)
            config_ = row_config(config, row, corruption)
            record = run_row(config_, workdir / corruption_dir(corruption) / row)
            results.setdefault(corruption, {})[row] = record
            (workdir / "results.json").write_text(json.dumps(results, indent=1) + "\n")
            (workdir / "results.md").write_text(markdown(results, config))
            plot(results, workdir / "iou_per_epoch.png")
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        rows = parse_names(FLAGS.rows, list(ROWS), "rows")
        corruptions = parse_corruptions(FLAGS.corruptions)
    except ValueError as e:
        cli.fail(str(e))
    results = cli.run_command(lambda: study(FLAGS.config, FLAGS.workdir, rows, corruptions))
    print(markdown(results, FLAGS.config))


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
