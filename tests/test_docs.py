"""The commands of README.md and docs/*.md still run: every `python -m MODULE` they show answers
--help, every script they name exists, and every import in their Python snippets resolves."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
TEXT = "\n".join(path.read_text() for path in DOCS)

MODULES = sorted(set(re.findall(r"python -m ([A-Za-z_][\w.]*)", TEXT)) - {"pytest"})
SCRIPTS = sorted(set(re.findall(r"python ((?:benchmarks|tools)/\w+\.py)", TEXT)))
IMPORTS = sorted(set(re.findall(r"^from (resam_jax[\w.]*) import ([\w, ]+)$", TEXT, re.M)))


def test_the_docs_name_commands():
    assert "resam_jax.main" in MODULES and "resam_jax.predict_scene" in MODULES, MODULES


@pytest.mark.parametrize("module", MODULES)
def test_module_command_answers_help(module):
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    # absl's --help exits 1 after the usage; an import error would exit 1 with a traceback.
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr[-2000:]
    shown = result.stdout + result.stderr
    assert "usage" in shown.lower() or f"python -m {module}" in shown, shown[-2000:]


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_exists(script):
    assert (REPO / script).is_file()


@pytest.mark.parametrize("module, names", IMPORTS)
def test_snippet_imports_resolve(module, names):
    imported = __import__(module, fromlist=["_"])
    for name in (n.strip() for n in names.split(",")):
        assert hasattr(imported, name), f"{module} has no {name}"
