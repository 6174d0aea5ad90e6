"""The accelerator check (benchmarks/device_check.py, issue 24) cannot rot: its --smoke run takes
the same code path on the CPU at the tiny SAM's size (parity float32 and bfloat16, the encoder
rows of both frameworks, the public PyTorch step and a resam-jax step in its own process) and
writes one JSON report whose rows all ran, agree and train.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_smoke(tmp_path):
    out = tmp_path / "device_check.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/device_check.py"), "--smoke", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "Device check: SAM tiny at 256" in completed.stdout
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert not [r for r in rows if "not_run" in r or "error" in r], rows
    parts = {(r["part"], r["name"].split()[0]) for r in rows}
    assert parts == {
        ("parity", "segment-anything"), ("parity", "resam-jax"),
        ("encoder", "segment-anything"), ("encoder", "resam-jax"),
        ("step", "PyTorch"), ("step", "resam-jax"),
    }, parts  # fmt: skip
    for row in rows:
        if row["part"] == "parity":
            assert row["ok"], row
        else:
            assert row["seconds"] > 0, row
            assert row["peak_gib"] is None or row["peak_gib"] >= 0, row
        if row["part"] == "step":
            assert row["valid_instances"] > 0 and not row.get("skipped"), row
            assert row["mfu"] > 0, row
