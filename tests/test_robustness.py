"""The robustness sweep end to end: the packaged tiny SAM on the synthetic dataset, clean and
under two corruptions, its three outputs, and one-line errors for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest

from resam_jax.data.corruptions import CORRUPTIONS
from resam_jax.experiments.robustness import parse_corruptions

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "resam_jax.robustness", "--config=configs/demo.py", *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_sweep_writes_json_table_and_chart(tmp_path, synthetic_data):
    manual_dir, data_dir = synthetic_data
    workdir = tmp_path / "robustness"
    result = _run(
        f"--workdir={workdir}",
        f"--config.data.manual_dir={manual_dir}",
        f"--config.data.data_dir={data_dir}",
        "--config.data.synthetic_images=8",  # the fixture's dataset: found, not regenerated
        "--config.eval.prompt_seeds=2",
        "--severity=5",
        "--corruptions=gaussian_noise,contrast",
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((workdir / "robustness.json").read_text())
    assert report["severity"] == 5 and report["split"] == "val"
    rows = report["rows"]
    assert list(rows) == ["clean", "gaussian_noise", "contrast"]
    for scores in rows.values():
        assert scores["images"] == 4 and scores["prompt_seeds"] == 2
        assert {"iou", "iou_std", "f1", "f1_std", "precision", "recall_std"} <= scores.keys()
    # The pretrained tiny SAM finds the objects on clean images; heavy corruptions cost IoU.
    assert rows["clean"]["iou"] > 0.2
    assert rows["gaussian_noise"]["iou"] < rows["clean"]["iou"] - 0.05
    assert rows["contrast"]["iou"] < rows["clean"]["iou"] - 0.05

    table = (workdir / "robustness.md").read_text().splitlines()
    body = [line for line in table if line.startswith("| ") and "±" in line]
    assert [line.split(" | ")[0] for line in body] == ["| clean", "| gaussian_noise", "| contrast"]
    assert "| corruption | images | IoU | F1 | precision | recall |" in table
    assert f"{100 * rows['clean']['iou']:.2f} ± {100 * rows['clean']['iou_std']:.2f}" in body[0]
    assert body[0] in result.stdout

    with PIL.Image.open(workdir / "robustness.png") as chart:
        assert chart.mode == "RGB" and chart.width > 300 and chart.height > 60


@pytest.mark.parametrize(
    "args,message",
    [
        (["--corruptions=fog,blurry"], "unknown corruption(s) blurry; expected some of: "),
        (["--severity=6"], "--severity=6; expected an integer in 1-5"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    result = _run(f"--workdir={tmp_path}", "--config.model.checkpoint=/nonexistent", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_parse_corruptions():
    assert parse_corruptions("") == list(CORRUPTIONS)
    assert parse_corruptions(" fog, snow ") == ["fog", "snow"]
    with pytest.raises(ValueError, match="gaussian_noise, shot_noise"):
        parse_corruptions("fog,nope")
