"""The package's layering (pyproject.toml [tool.importlinter]): commands > experiments >
inference > run > method, data > models; the method sees no model family; no import circle."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    result = subprocess.run(
        [sys.executable, "-c", "import sys, importlinter.cli as c; "
         "sys.exit(c.lint_imports(no_cache=True, no_logo=True))"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
