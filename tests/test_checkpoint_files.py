"""The checkpoint directory both families write (resam_jax.models.checkpoint_files): what is
written reads back as it was, and each way a directory can be wrong is one CheckpointError that
names the file and the field."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from resam_jax.models import checkpoint_files
from resam_jax.models.checkpoint_files import HEADER, PARAMS, CheckpointError
from resam_jax.models.sam.architecture import SamConfig, sam_config
from resam_jax.models.sam2.config import Sam2Config, sam2_config

FORMAT = "resam-jax/test/1"
# A list index inside the path (blocks/1), as Flax paths of nnx.List layers have.
PARAMS_IN = {
    ("image_encoder", "blocks", 1, "kernel"): np.arange(6, dtype=np.float32).reshape(2, 3),
    ("mask_decoder", "bias"): np.full((4,), 0.5, np.float32),
}


def missing(directory):
    return f"{directory} holds no test checkpoint"


@pytest.mark.parametrize(
    "config_type,make_config,model_type",
    [(SamConfig, sam_config, "tiny"), (Sam2Config, sam2_config, "hiera_test")],
    ids=["sam", "sam2"],
)
def test_what_is_written_reads_back(tmp_path, config_type, make_config, model_type):
    config = make_config(model_type, dtype="bfloat16", remat="blocks")
    source = {"path": "model.pth", "sha256": "0" * 64}
    directory = checkpoint_files.write_params(tmp_path / "ckpt", PARAMS_IN, config, source, FORMAT)
    header = checkpoint_files.read_header(directory, FORMAT, missing)
    assert header["model_type"] == model_type and header["source"] == source
    read, params = checkpoint_files.read_params(directory, header, config_type, make_config)
    assert read == config  # tuples stored as JSON lists come back as tuples
    assert set(params) == set(PARAMS_IN)  # the list index is an int again
    for path, value in PARAMS_IN.items():
        np.testing.assert_array_equal(params[path], value)


@pytest.fixture
def written(tmp_path):
    config = sam_config("tiny")
    source = {"path": "model.pth", "sha256": "0" * 64}
    return checkpoint_files.write_params(tmp_path / "ckpt", PARAMS_IN, config, source, FORMAT)


def read(directory):
    header = checkpoint_files.read_header(directory, FORMAT, missing)
    return checkpoint_files.read_params(directory, header, SamConfig, sam_config)


def edit_header(directory, change):
    header = json.loads((directory / HEADER).read_text())
    change(header)
    (directory / HEADER).write_text(json.dumps(header))


def test_a_folder_without_header_is_described_by_the_family(tmp_path):
    with pytest.raises(CheckpointError, match=f"^{tmp_path} holds no test checkpoint$"):
        read(tmp_path)


def test_a_header_that_is_not_json_is_named(written):
    (written / HEADER).write_text('{"format": ')
    with pytest.raises(CheckpointError, match=f"{written / HEADER} is not valid JSON: "):
        read(written)


def test_another_format_is_named_with_the_expected_one(written):
    edit_header(written, lambda h: h.update(format="resam-jax/sam2/1"))
    with pytest.raises(
        CheckpointError,
        match=r"field 'format' should be 'resam-jax/test/1', got 'resam-jax/sam2/1'",
    ):
        read(written)


def test_a_config_the_family_refuses_names_the_field(written):
    edit_header(written, lambda h: h["config"].update(dtype="float16"))
    with pytest.raises(CheckpointError) as error:
        read(written)
    message = str(error.value)
    assert message.startswith(f"{written / HEADER}: bad field 'config': SamConfig.dtype='float16'")


def test_fields_the_config_no_longer_has_are_ignored(written):
    """A header written by a version with another field still reads (forward compatible)."""
    edit_header(written, lambda h: h["config"].update(retired_option=3))
    config, _ = read(written)
    assert config == sam_config("tiny")
    assert "retired_option" not in {f.name for f in dataclasses.fields(config)}


def test_unreadable_parameters_are_named(written):
    for item in (written / PARAMS).iterdir():
        if item.is_file():
            item.write_bytes(b"damaged")
    with pytest.raises(CheckpointError, match=f"cannot read parameters under {written / PARAMS}"):
        read(written)
