r"""Robustness sweep: a model on the clean evaluation split and under ImageNet-C corruptions.

    python -m resam_jax.robustness --config configs/nwpu.py --workdir runs/robustness \
        [--severity 3] [--corruptions fog,snow,...] [--config.a.b=value ...]

Evaluates config.model.checkpoint (a converted SAM: Direct SAM; or a run's export/sam_merged:
the trained model) on config.data.eval_split as a training run evaluates (config.eval, over
config.eval.prompt_seeds point draws), once clean and once per corruption at --severity
(data.corruption, resam_jax/data/corruptions.py; all 15 unless --corruptions names some), and
writes to the workdir:
    robustness.json   per row: the scores (mean and _std over prompt draws), images, draws
    robustness.md     the table: rows = clean and each corruption, IoU/F1/precision/recall in
                      percent as mean ± std over the prompt draws
    robustness.png    IoU per corruption as bars, the clean IoU as a reference line
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from absl import app, flags, logging

from resam_jax.data.corruptions import CORRUPTIONS, SEVERITIES
from resam_jax.method.metrics import SCORE_NAMES
from resam_jax.run import cli  # --config, --workdir and the multi-host flags

_SEVERITY = flags.DEFINE_integer("severity", 3, "corruption severity, 1-5")
_CORRUPTIONS = flags.DEFINE_string(
    "corruptions", "", "comma-separated corruption names; empty = all 15 ImageNet-C ones"
)
FLAGS = flags.FLAGS
CLEAN = "clean"


def parse_corruptions(text: str) -> list[str]:
    """Names from "a,b,..." (empty: all 15); ValueError naming the valid ones for an unknown one."""
    names = [n.strip() for n in text.split(",") if n.strip()] or list(CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown:
        raise ValueError(
            f"unknown corruption(s) {', '.join(unknown)}; expected some of: {', '.join(CORRUPTIONS)}"
        )
    return names


def sweep(config, workdir: str | Path, corruptions: list[str], severity: int) -> dict[str, Any]:
    """Scores of config's model, clean and per corruption; writes the three files to workdir."""
    from resam_jax import parallel
    from resam_jax.method.train_state import split_model
    from resam_jax.run import Evaluator, setup

    if severity not in SEVERITIES:
        raise setup.RunError(f"--severity={severity}; expected an integer in 1-5")
    mesh = parallel.data_mesh()
    prepared = setup.prepare(config, workdir)
    workdir, data_dir = prepared.workdir, prepared.data_dir
    graphdef, lora, frozen = split_model(prepared.model)
    lora, frozen = parallel.replicate(lora, mesh), parallel.replicate(frozen, mesh)

    rows: dict[str, dict[str, float]] = {}
    evaluator = None
    for name in (CLEAN, *corruptions):
        variant = copy.deepcopy(config)
        variant.data.corruption = "" if name == CLEAN else name
        variant.data.corruption_severity = severity
        data_config = setup.host_data_config(variant, data_dir)
        if evaluator is None:
            evaluator = Evaluator(graphdef, variant, data_config, mesh, workdir)
        else:
            evaluator.set_data(data_config)
        rows[name] = evaluator.scores(lora, frozen)
        logging.info("%s: IoU %.4f", name, rows[name]["iou"])

    result = {
        "checkpoint": config.model.checkpoint,
        "dataset": f"{config.data.dataset}/{config.data.dataset_config}",
        "split": config.data.eval_split,
        "severity": severity,
        "rows": rows,
    }
    import jax

    if jax.process_index() == 0:
        (workdir / "robustness.json").write_text(json.dumps(result, indent=2) + "\n")
        (workdir / "robustness.md").write_text(markdown_table(result))
        bar_chart(result).save(workdir / "robustness.png")
    return result


def markdown_table(result: dict[str, Any]) -> str:
    rows = result["rows"]
    draws = max(int(s["prompt_seeds"]) for s in rows.values())
    lines = [
        f"Robustness of `{result['checkpoint'] or 'random init'}` on {result['dataset']} "
        f"({result['split']}), ImageNet-C severity {result['severity']}; percent, mean ± std "
        f"over {draws} prompt draw(s).",
        "",
        "| corruption | images | " + " | ".join(_LABELS[n] for n in SCORE_NAMES) + " |",
        "|---|---:|" + "---:|" * len(SCORE_NAMES),
    ]
    for name, scores in rows.items():
        cells = [f"{100 * scores[n]:.2f} ± {100 * scores[n + '_std']:.2f}" for n in SCORE_NAMES]
        lines.append(f"| {name} | {int(scores['images'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_LABELS = {"iou": "IoU", "f1": "F1", "precision": "precision", "recall": "recall"}


def bar_chart(result: dict[str, Any]):
    """IoU per corruption as horizontal bars (PIL: no plotting library needed), the clean IoU
    as a vertical red line, each bar labelled with its value in percent."""
    from PIL import Image, ImageDraw

    rows = result["rows"]
    names = [n for n in rows if n != CLEAN]
    clean = 100 * rows[CLEAN]["iou"]
    top = max([clean, *(100 * rows[n]["iou"] for n in names), 1e-6])
    label_w, bar_w, row_h, margin = 130, 400, 22, 10
    width, height = label_w + bar_w + 70, 40 + row_h * len(names) + 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, 8), f"IoU (%) under ImageNet-C, severity {result['severity']}", fill="black")
    scale = bar_w / top
    for i, name in enumerate(names):
        y = 40 + i * row_h
        value = 100 * rows[name]["iou"]
        draw.text((margin, y + 4), name, fill="black")
        draw.rectangle(
            [label_w, y + 3, label_w + max(1, round(value * scale)), y + row_h - 3],
            fill=(70, 110, 180),
        )
        draw.text((label_w + round(value * scale) + 4, y + 4), f"{value:.1f}", fill="black")
    x = label_w + round(clean * scale)
    bottom = 40 + row_h * len(names)
    draw.line([x, 34, x, bottom + 2], fill=(200, 30, 30), width=2)
    draw.text((max(margin, x - 40), bottom + 8), f"clean {clean:.1f}", fill=(200, 30, 30))
    return image


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        names = parse_corruptions(_CORRUPTIONS.value)
        if _SEVERITY.value not in SEVERITIES:
            raise ValueError(f"--severity={_SEVERITY.value}; expected an integer in 1-5")
    except ValueError as e:
        cli.fail(str(e))
    result = cli.run_command(lambda: sweep(FLAGS.config, FLAGS.workdir, names, _SEVERITY.value))
    print(markdown_table(result))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
