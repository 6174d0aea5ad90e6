"""The pseudo-label diagnosis command (resam_jax.diagnose) end to end: the packaged tiny SAM on
the synthetic dataset, its JSON and table, and a one-line error for bad input."""

import json
from pathlib import Path

from data_fixtures import run_module

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.py"


def _run(*args: str) -> tuple[int, str]:
    return run_module("resam_jax.diagnose", f"--config={DEMO_CONFIG}", *args)


def test_diagnosis_scores_every_stage(tmp_path, synthetic_data):
    manual_dir, data_dir = synthetic_data
    workdir = tmp_path / "diagnose"
    result = _run(
        f"--workdir={workdir}",
        f"--config.data.manual_dir={manual_dir}",
        f"--config.data.data_dir={data_dir}",
        "--config.data.synthetic_images=8",  # the fixture's dataset: found, not regenerated
        "--images=6",
    )
    code, output = result
    assert code == 0, output[-3000:]
    report = json.loads((workdir / "diagnose.json").read_text())
    assert report["images"] == 6 and report["instances"] > 6
    p = report["percent"]
    stages = ("point", "refined", "requery_refined", "requery_point", "requery_gt")
    assert all(0 <= p[s] <= 100 and p[s + "_area"] >= 0 for s in stages)
    # Refine keeps pixels with p (1 - H) > 0.3, i.e. p > 0.73: a subset of each point mask.
    assert p["refined_area"] < p["point_area"]
    assert 0 < p["refine_dropped"] < 100
    # The pretrained tiny SAM segments its synthetic objects from their GT boxes.
    assert p["requery_gt"] > 40
    table = (workdir / "diagnose.md").read_text()
    assert f"| point masks | {p['point']:.1f} |" in table
    assert table.splitlines()[0] in output


def test_no_images_is_a_one_line_error(tmp_path):
    code, output = _run(f"--workdir={tmp_path}", "--images=0")
    assert code == 2
    assert "error: --images=0; expected at least 1" in output
