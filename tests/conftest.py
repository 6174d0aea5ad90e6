"""Shared test set-up: float32 matmuls everywhere, so parity bounds mean what they say."""

import os
import sys
from pathlib import Path

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "float32")
sys.path.insert(0, str(Path(__file__).parent))

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def nwpu_dir() -> Path:
    """The real NWPU VHR-10 benchmark, beside the repository (never copied into it)."""
    path = Path(os.environ.get("RESAM_NWPU_DIR", REPO_ROOT.parent / "shared" / "data" / "NWPU"))
    if not (path / "Annotations").is_dir():
        pytest.skip(f"real NWPU VHR-10 not found at {path}")
    return path
