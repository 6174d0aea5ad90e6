"""benchmarks/encoder.py --family sam2 (issue 22) on the tests' small Hiera at its 256 px: the
parity check that comes before any timing passes (sam2's perturbed random weights, converted,
give resam-jax the same features within tests/tolerances.py's bound; chunked attention runs on
the global block's 256 tokens by 128), then each side times its forward in its own process and
reports its peak memory."""

import pytest
from data_fixtures import run_module

pytest.importorskip("torch")
pytest.importorskip("sam2")


def test_sam2_encoder_benchmark_checks_parity_then_times():
    code, output = run_module(
        "benchmarks.encoder", "--family", "sam2", "--model-type", "hiera_test",
        "--attention", "chunked", "--repeats", "1",
    )  # fmt: skip
    assert code == 0, output
    assert "parity before timing: max |difference| of the features chunked" in output
    rows = [line for line in output.splitlines() if line.startswith(("sam2 ", "resam-jax "))]
    assert [row.split(" (")[0] for row in rows] == ["sam2 hiera_test", "resam-jax"], output
    for row in rows:
        seconds, _, _, peak_gib, over_idle = map(float, row.split(")")[-1].split()[:5])
        assert seconds > 0 and peak_gib > over_idle >= 0, row
