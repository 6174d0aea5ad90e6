"""The study runner end to end on the synthetic dataset: rows as overrides, corruptions, the
three outputs, resuming a finished study without running anything again, bad input."""

import json
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest

from resam_jax.experiments.study import (
    CLEAN,
    LABELS,
    ROWS,
    figure,
    parse_corruptions,
    parse_names,
    row_config,
)

REPO = Path(__file__).resolve().parents[1]


def _run(workdir, synthetic_data, *args: str) -> subprocess.CompletedProcess:
    manual_dir, data_dir = synthetic_data
    return subprocess.run(
        [sys.executable, "-m", "resam_jax.study", "--config=configs/demo.py",
         f"--workdir={workdir}", f"--config.data.manual_dir={manual_dir}",
         f"--config.data.data_dir={data_dir}", "--config.data.synthetic_images=8",
         "--config.train.num_epochs=1", "--config.train.eval_every_epochs=1",
         "--config.train.compare_with_supervised=False", "--config.train.num_overlays=0",
         "--config.data.batch_size=4", *args],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip


def test_rows_are_the_papers_rows_as_overrides():
    from test_main_run import load_config

    config = load_config("demo")
    refine = row_config(config, "refine_only", "fog")
    assert (refine.method.requery, refine.method.ssa_max_weight) == (False, 0.0)
    assert refine.data.corruption == "fog"
    assert row_config(config, "resam", CLEAN).data.corruption == ""
    assert refine.data.corruption_severity == config.data.corruption_severity == 3
    strong = row_config(config, "resam", "fog:5")  # a severity of its own
    assert (strong.data.corruption, strong.data.corruption_severity) == ("fog", 5)
    assert row_config(config, "supervised", CLEAN).method.mode == "supervised"
    assert config.method.requery is True and config.data.corruption == ""  # untouched
    assert list(ROWS)[0] == "direct" and "resam" in ROWS


def test_study_writes_results_table_and_plot_and_resumes(tmp_path, synthetic_data):
    workdir = tmp_path / "study"
    args = ("--rows=direct,refine_only,resam", "--corruptions=clean,gaussian_noise:5")
    result = _run(workdir, synthetic_data, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert list(results) == ["clean", "gaussian_noise:5"]
    assert (workdir / "gaussian_noise-5" / "resam" / "result.json").exists()
    for rows in results.values():
        assert list(rows) == ["direct", "refine_only", "resam"]
        assert rows["direct"]["steps"] == 0 and rows["resam"]["steps"] == 2
        # Direct SAM, then one evaluation per epoch.
        assert len(rows["direct"]["iou_per_epoch"]) == 1
        assert len(rows["resam"]["iou_per_epoch"]) == 2
        assert rows["resam"]["pseudo_labels"]  # the per-epoch diagnostics
        assert rows["resam"]["iou_per_epoch"][0][1] == pytest.approx(rows["direct"]["final"]["iou"])
    # The corruption reaches the data: Direct SAM scores differ from the clean ones.
    assert results["clean"]["direct"]["final"] != results["gaussian_noise:5"]["direct"]["final"]
    table = (workdir / "results.md").read_text()
    assert "### gaussian_noise:5" in table and "| Refine only |" in table
    with PIL.Image.open(workdir / "iou_per_epoch.png") as image:
        assert image.width > 600

    # Finished rows are read back, not run again.
    again = _run(workdir, synthetic_data, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "study: clean / resam" in again.stderr and "training:" not in again.stderr
    assert json.loads((workdir / "results.json").read_text()) == results


def test_plot_keeps_each_rows_colour_in_every_panel_and_names_every_row():
    """Panels that hold different rows (a shift whose rows are still running) draw a row in the
    same colour everywhere, and the legend names the rows of all panels, not only the last."""
    import matplotlib.pyplot as plt

    def record(*ious):
        return {"iou_per_epoch": [(f"epoch {i + 1}", v) for i, v in enumerate(ious)]}

    results = {
        "clean": {"direct": {"iou_per_epoch": [("Direct SAM", 0.3)]},
                  "refine_only": record(0.2, 0.1), "resam": record(0.25, 0.2),
                  "supervised": record(0.35, 0.4)},
        "fog": {"direct": {"iou_per_epoch": [("Direct SAM", 0.2)]}, "resam": record(0.15, 0.1)},
        "snow": {"supervised": record(0.3, 0.32)},
        "contrast": {"resam_ema": record(0.2, 0.2)},
    }  # fmt: skip
    fig = figure(results, columns=3)

    def curves(axis) -> dict[float, str]:  # final IoU -> colour, Direct SAM's dashed line left out
        return {round(float(line.get_ydata()[-1]), 6): line.get_color()
                for line in axis.get_lines() if line.get_linestyle() != "--"}  # fmt: skip

    try:
        clean, fog, snow, contrast = (curves(axis) for axis in fig.axes[:4])
        # ReSAM: the second row drawn under clean, the first under fog.
        assert clean[20.0] == fog[10.0]
        assert clean[40.0] == snow[32.0]  # Supervised
        assert len({clean[10.0], clean[20.0], clean[40.0], contrast[20.0]}) == 4
        (legend,) = fig.legends
        names = [text.get_text() for text in legend.get_texts()]
        drawn = {"direct", "refine_only", "resam", "resam_ema", "supervised"}
        assert names == [LABELS[r] for r in ROWS if r in drawn]
        assert [axis.get_visible() for axis in fig.axes] == [True] * 4 + [False] * 2
    finally:
        plt.close(fig)


def test_unknown_row_or_corruption_is_a_one_line_error(tmp_path, synthetic_data):
    with pytest.raises(ValueError, match="unknown resmu"):
        parse_names("direct,resmu", list(ROWS), "rows")
    assert parse_corruptions("clean, fog:4,snow") == ["clean", "fog:4", "snow"]
    for bad in ("fog:6", "clean:3", "fog:", "fog:x"):
        with pytest.raises(ValueError, match=f"unknown {bad}"):
            parse_corruptions(f"clean,{bad}")
    result = _run(tmp_path / "s", synthetic_data, "--corruptions=clean,fgo")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown fgo" in result.stderr and "gaussian_noise" in result.stderr
