"""Shared test set-up: float32 matmuls everywhere, so parity bounds mean what they say."""

import sys
from pathlib import Path

import jax
import pytest

jax.config.update("jax_default_matmul_precision", "float32")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def nwpu_dir() -> Path:
    """The real NWPU VHR-10 benchmark, beside the repository (never copied into it)."""
    from data_fixtures import nwpu_real_dir

    path = nwpu_real_dir()
    if path is None:
        pytest.skip("real NWPU VHR-10 not found next to the repository ($RESAM_NWPU_DIR)")
    return path


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory):
    """A small demo-style dataset (8 train, 4 val images), generated and prepared once per
    session for the run tests: (manual_dir, data_dir)."""
    from resam_jax.data.prepare import prepare
    from resam_jax.data.synthetic import write_coco_dataset

    root = tmp_path_factory.mktemp("synthetic")
    manual_dir = write_coco_dataset(root / "coco", num_train=8, num_val=4, image_size=160, seed=0)
    splits = {"train": "annotations/train.json", "val": "annotations/val.json"}
    prepare(
        "coco_instances",
        config="resam_demo",
        data_dir=root / "tfds",
        manual_dir=manual_dir,
        annotations=splits,
    )
    return manual_dir, root / "tfds"
