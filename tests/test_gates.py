"""The study's gates (resam_jax.experiments.gates): premise from the diagnosis, headroom from a
study's results, each with its margin, and the diagnosis command printing both."""

import json

import pytest

from resam_jax.experiments.gates import (
    HEADROOM_MARGIN,
    PREMISE_MARGIN,
    headroom_gates,
    premise_gate,
)


@pytest.mark.parametrize(("targets", "passed"), [(41.5 + PREMISE_MARGIN, True), (43.4, False)])
def test_premise_compares_targets_with_the_point_masks(targets, passed):
    gate = premise_gate({"point": 41.5, "requery_refined": targets, "requery_gt": 90.0})
    assert gate.passed is passed
    assert gate.value == pytest.approx(targets - 41.5)
    assert gate.line().startswith(f"premise gate: {'PASS' if passed else 'FAIL'}: ReSAM's targets")


def _row(iou):
    return {"final": {"iou": iou}}


def test_headroom_per_shift_compares_supervised_with_direct():
    results = {
        "fog": {"direct": _row(0.30), "resam": _row(0.90), "supervised": _row(0.36)},
        "clean": {"direct": _row(0.40), "supervised": _row(0.40 + HEADROOM_MARGIN / 100 - 1e-3)},
        "jpeg_compression": {"direct": _row(0.40)},  # no Supervised row yet: no gate
    }
    gates = headroom_gates(results)
    assert [g.name for g in gates] == ["headroom (fog)", "headroom (clean)"]
    assert [g.passed for g in gates] == [True, False]
    assert gates[0].value == pytest.approx(6.0)


def test_diagnose_prints_the_premise_and_the_study_gates(tmp_path, synthetic_data):
    from test_diagnose import _run

    manual_dir, data_dir = synthetic_data
    study = tmp_path / "results.json"
    study.write_text(json.dumps({"fog": {"direct": _row(0.30), "supervised": _row(0.37)}}))
    code, output = _run(
        f"--workdir={tmp_path / 'diagnose'}",
        f"--config.data.manual_dir={manual_dir}",
        f"--config.data.data_dir={data_dir}",
        "--config.data.synthetic_images=8",
        "--images=2",
        f"--study={study}",
    )
    assert code == 0, output[-3000:]
    report = json.loads((tmp_path / "diagnose" / "diagnose.json").read_text())
    gate = premise_gate(report["percent"])
    assert report["premise_gate"]["passed"] is gate.passed
    assert gate.line() in output
    assert "headroom (fog) gate: PASS: Supervised 37.00 vs Direct SAM 30.00 IoU: +7.0" in output
    code, output = _run(f"--workdir={tmp_path / 'd2'}", f"--study={tmp_path / 'none.json'}")
    assert code == 2 and "error: --study=" in output
