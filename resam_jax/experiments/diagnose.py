r"""Where pseudo-labels come from and what each stage does to them, against the GT masks.

    python -m resam_jax.diagnose --config configs/study_nwpu.py --workdir runs/diagnose \
        [--images 80] [--config.data.corruption=fog ...]

The model of config.model.checkpoint plays the teacher of ReSAM's first step (Direct SAM: the
teacher before any update) on --images training images (data.train_images: the target half in
the study; flipped and prompted as training draws them, one pass), and every instance with a
non-empty GT mask is scored (per-instance IoU against GT, mean over instances, percent) at each
stage of docs/method.md section 4 and beside the alternatives that tell them apart:

    point masks       the teacher prompted with the training points (what Refine starts from)
    refined masks     Refine: the confident pixels, overlaps removed
    requery (refined) Requery: the teacher prompted with the refined masks' boxes (ReSAM's
                      training targets)
    requery (point)   the teacher prompted with the point masks' boxes: Requery without Refine
    requery (GT box)  the teacher prompted with the GT boxes: what box prompts can reach when
                      the box is right (the ceiling of Requery)

with each one's area relative to the GT mask, and the share of the point masks' foreground that
Refine drops as unconfident. Self-training gains when its targets are better than the student's
own point masks; this says whether they are and, if not, which stage loses. GT masks are read
for scoring only. One process (the model on its first device).

Writes diagnose.json and diagnose.md to the workdir and prints the table, then the study's
gates (resam_jax.experiments.gates): the premise gate from this table and, with --study, the
headroom gate of every shift of a study's results.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from absl import app, flags, logging

from resam_jax.experiments.gates import headroom_gates, premise_gate
from resam_jax.run import cli  # --config, --workdir and the multi-host flags

_IMAGES = flags.DEFINE_integer("images", 80, "training images to score (one pass)")
_STUDY = flags.DEFINE_string(
    "study", "", "a study's results.json: also print its headroom gates (docs/study.md)"
)
FLAGS = flags.FLAGS

STAGES = {
    "point": "point masks",
    "refined": "refined masks",
    "requery_refined": "requery (refined box): ReSAM's targets",
    "requery_point": "requery (point-mask box): no Refine",
    "requery_gt": "requery (GT box): the box-prompt ceiling",
}


def diagnose(config, workdir: str | Path, images: int) -> dict[str, Any]:
    """Per-stage IoU and relative area against GT on `images` training images (module
    docstring); writes diagnose.json and diagnose.md to workdir."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from resam_jax.data import pipeline
    from resam_jax.method.metrics import instance_iou
    from resam_jax.method.refine import refine_masks
    from resam_jax.method.requery import pseudo_labels, requery_prompts
    from resam_jax.run import setup

    if images < 1:
        raise setup.RunError(f"--images={images}; expected at least 1")
    prepared = setup.prepare(config, workdir)
    model, workdir = prepared.model, prepared.workdir
    dataset = pipeline.make_dataset(prepared.data_config, "train", train=True, seed=config.seed)
    threshold = config.method.refine_threshold

    @jax.jit
    def stages(batch):
        embedding = model.encode_pixels(batch["weak_image"], batch["content_mask"])
        given = batch["instance_valid"]
        logits, _ = model.decode_masks(
            embedding, {"points": batch["points"], "point_labels": batch["point_labels"]}
        )
        point = (logits > 0) & given[..., None, None]
        refined, _ = refine_masks(logits, given, threshold, config.method.refine_entropy)

        def requery(boxes):
            return pseudo_labels(model.decode_masks(embedding, {"boxes": boxes})[0])

        masks = {
            "point": point,
            "refined": refined,
            "requery_refined": requery(requery_prompts(refined, given)[0]),
            "requery_point": requery(requery_prompts(point, given)[0]),
            "requery_gt": requery(batch["boxes"]),
        }
        gt = batch["masks"]
        gt_area = gt.sum((-1, -2), dtype=jnp.float32)
        out = {}
        for name, mask in masks.items():
            out[name] = instance_iou(mask, gt)
            out[name + "_area"] = mask.sum((-1, -2), dtype=jnp.float32) / jnp.maximum(gt_area, 1.0)
        unconfident = point & ~refined
        out["refine_dropped"] = unconfident.sum((-1, -2), dtype=jnp.float32) / jnp.maximum(
            point.sum((-1, -2), dtype=jnp.float32), 1.0
        )
        out["scored"] = given & (gt_area > 0)
        return out

    values: dict[str, list[float]] = {}
    seen = 0
    keys = ("weak_image", "content_mask", "points", "point_labels", "instance_valid", "masks",
            "boxes")  # fmt: skip
    for batch in dataset:
        if seen >= images:
            break
        take = min(images - seen, len(batch["image_id"]))
        out = jax.device_get(stages({k: jnp.asarray(batch[k][:take]) for k in keys}))
        scored = np.asarray(out.pop("scored"))
        for name, v in out.items():
            values.setdefault(name, []).extend(np.asarray(v)[scored].tolist())
        seen += take
    if not values or not values["point"]:
        raise setup.RunError(f"no instance with a GT mask in {seen} training images")
    result = {
        "checkpoint": config.model.checkpoint,
        "dataset": f"{config.data.dataset}/{config.data.dataset_config}",
        "train_images": config.data.train_images,
        "corruption": config.data.corruption or "clean",
        "severity": config.data.corruption_severity,
        "images": seen,
        "instances": len(values["point"]),
        "refine_threshold": threshold,
        "percent": {k: 100.0 * float(np.mean(v)) for k, v in values.items()},
    }
    gate = premise_gate(result["percent"])
    result["premise_gate"] = {"passed": gate.passed, "margin": gate.value, "required": gate.required}  # fmt: skip
    (workdir / "diagnose.json").write_text(json.dumps(result, indent=2) + "\n")
    (workdir / "diagnose.md").write_text(markdown_table(result))
    logging.info("wrote %s", workdir / "diagnose.md")
    return result


def markdown_table(result: dict[str, Any]) -> str:
    p = result["percent"]
    shift = result["corruption"]
    if shift != "clean":
        shift += f" (severity {result['severity']})"
    lines = [
        f"Pseudo-label stages of `{result['checkpoint'] or 'random init'}` on {result['dataset']} "
        f"training images ({result['train_images']}, {shift}): {result['images']} images, "
        f"{result['instances']} instances; per-instance IoU against GT and area relative to GT, "
        "percent",
        "",
        "| stage | IoU | area / GT area |",
        "|---|---:|---:|",
        *(
            f"| {label} | {p[name]:.1f} | {p[name + '_area']:.0f} |"
            for name, label in STAGES.items()
        ),
        "",
        f"Refine (p (1 - H) > {result['refine_threshold']}) drops {p['refine_dropped']:.1f}% of "
        "the point masks' foreground as unconfident.",
        "",
        premise_gate(p).line(),
        "",
    ]
    return "\n".join(lines)


def study_gates(path: str) -> str:
    """The headroom gate lines of a study's results.json."""
    from resam_jax.run import setup

    try:
        results = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as e:
        raise setup.RunError(f"--study={path}: expected a study's results.json ({e})") from None
    gates = headroom_gates(results)
    if not gates:
        return f"{path}: no shift has both the Direct SAM and the Supervised row yet\n"
    return "".join(gate.line() + "\n" for gate in gates)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")

    def run():
        result = diagnose(FLAGS.config, FLAGS.workdir, _IMAGES.value)
        return markdown_table(result) + (study_gates(_STUDY.value) if _STUDY.value else "")

    print(cli.run_command(run))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
