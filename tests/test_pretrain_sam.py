"""tools/pretrain_sam.py: a few steps on the synthetic dataset, packaged and resumed exactly."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from resam_jax.models.sam import load_sam
from resam_jax.models.sam.checkpoint import load_sam_params

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools import pretrain_sam  # noqa: E402


def _args(data_dir, resume_dir, *extra):
    return pretrain_sam._parser().parse_args(
        [
            "--dataset", "coco_instances", "--dataset-config", "resam_demo",
            "--data-dir", str(data_dir), "--source-half", "first", "--model-type", "tiny",
            "--image-size", "64", "--max-instances", "4", "--batch-size", "2", "--steps", "4",
            "--eval-split", "", "--log-every", "1", "--resume-dir", str(resume_dir), *extra,
        ]
    )  # fmt: skip


def test_resume_is_exact_and_the_package_loads(synthetic_data, tmp_path):
    _, data_dir = synthetic_data
    straight = pretrain_sam.run(
        _args(data_dir, tmp_path / "a", "--eval-split", "val", "--output", str(tmp_path / "sam"))
    )
    assert straight["step"] == 4 and len(straight["losses"]) == 4
    assert all(np.isfinite(straight["losses"]))
    first = pretrain_sam.run(_args(data_dir, tmp_path / "b", "--stop-after", "2"))
    assert first["step"] == 2 and first["scores"] == {}
    resumed = pretrain_sam.run(_args(data_dir, tmp_path / "b", "--output", str(tmp_path / "sam_b")))  # fmt: skip
    assert resumed["step"] == 4
    # Same loss at every step whether the run was resumed or not, and the same parameters.
    assert first["losses"] + resumed["losses"] == straight["losses"]
    _, a = load_sam_params(tmp_path / "sam")
    _, b = load_sam_params(tmp_path / "sam_b")
    assert a.keys() == b.keys()
    for path in a:
        np.testing.assert_array_equal(a[path], b[path], err_msg=str(path))

    model = load_sam(tmp_path / "sam")
    assert model.config.model_type == "tiny" and model.config.image_size == 64
    header = json.loads((tmp_path / "sam" / "sam_checkpoint.json").read_text())
    source = header["source"]
    assert source["trained_steps"] == 4 and source["pixel_norm"] == "unit"
    for prompt in ("box_prompt", "point_prompt_1pos_1neg"):
        assert 0.0 <= source["eval"][prompt]["iou"] <= 1.0
    assert straight["scores"]["boxes"]["images"] == 4


def test_package_only_needs_a_checkpoint(tmp_path, synthetic_data):
    _, data_dir = synthetic_data
    with pytest.raises(SystemExit, match="no checkpoint"):
        pretrain_sam.run(_args(data_dir, tmp_path / "empty", "--package-only"))


def test_packaged_small_sam_header_and_parameters():
    """resam_jax/assets/sam_small_nwpu: made by this tool, [0, 1] pixels, parameters that fit
    the small config (load_sam builds the model from exactly these)."""
    from resam_jax.models.sam.checkpoint import load_sam_params

    directory = Path(__file__).resolve().parents[1] / "resam_jax" / "assets" / "sam_small_nwpu"
    header = json.loads((directory / "sam_checkpoint.json").read_text())
    source = header["source"]
    assert header["model_type"] == "small" and header["config"]["image_size"] == 384
    assert source["path"] == "tools/pretrain_sam.py" and source["pixel_norm"] == "unit"
    assert "first half" in source["train_data"] and source["trained_steps"] > 0
    assert {"box_prompt", "point_prompt_1pos_1neg"} <= source["eval"].keys()
    config, params = load_sam_params(directory)  # checks every shape against the config
    assert config.model_type == "small" and config.lora_start_layer is None
    assert sum(v.nbytes for v in params.values()) < 20e6


def test_tiles_and_a_wider_deeper_encoder_are_packaged_as_trained(synthetic_data, tmp_path):
    _, data_dir = synthetic_data
    extra = ["--tile-size", "48", "--encoder-width", "64", "--encoder-depth", "3", "--steps", "2"]
    result = pretrain_sam.run(
        _args(
            data_dir,
            tmp_path / "ckpt",
            *extra,
            "--eval-split",
            "val",
            "--output",
            str(tmp_path / "sam"),
        )  # fmt: skip
    )
    assert result["step"] == 2 and all(np.isfinite(result["losses"]))
    model = load_sam(tmp_path / "sam")
    config = model.config
    assert (config.encoder_embed_dim, config.encoder_num_heads, config.encoder_depth) == (64, 2, 3)
    assert config.encoder_global_attn_indexes == (1,)
    source = json.loads((tmp_path / "sam" / "sam_checkpoint.json").read_text())["source"]
    assert "--tile-size 48 --encoder-width 64 --encoder-depth 3" in source["command"]
    assert "native-resolution tiles of 48 px" in source["train_data"]
    with pytest.raises(SystemExit, match="--encoder-width=40: expected a multiple of 32"):
        pretrain_sam.run(_args(data_dir, tmp_path / "bad", "--encoder-width", "40"))
