"""weights_convert.convert_sam: round trips, model-type detection, and every refusal."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from data_fixtures import run_module
from sam_reference import build_reference, nchw, nhwc, numpy_state_dict

from resam_jax.models.sam import CheckpointError, load_sam, load_sam_params, sam_config
from resam_jax.models.sam.params import torch_to_flax
from weights_convert.convert_sam import main as convert_main

TINY = sam_config("tiny")


@pytest.fixture(scope="module")
def reference():
    return build_reference(TINY, seed=11)


@pytest.fixture(scope="module")
def pth(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("pth") / "sam_tiny.pth"
    torch.save(reference.state_dict(), path)
    return path


def run_cli(*args):
    """The converter as a user runs it: a separate process, its exit code and output."""
    return run_module("weights_convert.convert_sam", *args)


def assert_clean_failure(code, output, *fragments):
    assert code == 2, output
    assert "Traceback" not in output, output
    for fragment in fragments:
        assert fragment in output, output


def test_round_trip_preserves_every_tensor_and_the_model(reference, pth, tmp_path):
    out = tmp_path / "ckpt"
    assert convert_main(["--checkpoint", str(pth), "--output", str(out)]) == 0
    config, params = load_sam_params(out)
    assert config == TINY
    expected, unexpected = torch_to_flax(numpy_state_dict(reference))
    assert not unexpected
    assert params.keys() == expected.keys()
    for path, value in expected.items():
        np.testing.assert_array_equal(params[path], value, err_msg=str(path))

    model = load_sam(out)
    images = np.random.default_rng(0).normal(size=(1, 256, 256, 3)).astype(np.float32)
    with torch.no_grad():
        want = nhwc(reference.image_encoder(nchw(images)))
    np.testing.assert_allclose(model.encode(jnp.asarray(images)), want, rtol=1e-4, atol=2e-4)


def test_lora_model_loads_as_plain_sam(pth, tmp_path):
    out = tmp_path / "ckpt"
    convert_main(["--checkpoint", str(pth), "--output", str(out)])
    plain, adapted = load_sam(out), load_sam(out, lora_start_layer=0)
    images = jnp.asarray(np.random.default_rng(1).normal(size=(1, 256, 256, 3)), jnp.float32)
    np.testing.assert_array_equal(plain.encode(images), adapted.encode(images))


def test_reconverting_the_same_file_is_a_no_op(pth, tmp_path):
    out = tmp_path / "ckpt"
    assert convert_main(["--checkpoint", str(pth), "--output", str(out)]) == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, output = run_cli("--checkpoint", pth, "--output", out)
    assert code == 0 and "nothing to do" in output, output
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_refuses_an_output_holding_a_different_checkpoint(pth, tmp_path):
    out = tmp_path / "ckpt"
    convert_main(["--checkpoint", str(pth), "--output", str(out)])
    other = tmp_path / "other.pth"
    torch.save(build_reference(TINY, seed=12).state_dict(), other)
    code, output = run_cli("--checkpoint", other, "--output", out)
    assert_clean_failure(code, output, "already holds a different checkpoint", str(out))
    assert load_sam_params(out)[0] == TINY  # untouched


def test_refuses_a_non_empty_directory_that_is_not_a_checkpoint(pth, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, output = run_cli("--checkpoint", pth, "--output", out)
    assert_clean_failure(code, output, "not empty")
    assert (out / "keep.txt").read_text() == "mine"


def test_missing_file(tmp_path):
    code, output = run_cli("--checkpoint", tmp_path / "nope.pth", "--output", tmp_path / "o")
    assert_clean_failure(code, output, "does not exist", "nope.pth")


def test_truncated_file(pth, tmp_path):
    broken = tmp_path / "truncated.pth"
    broken.write_bytes(pth.read_bytes()[: pth.stat().st_size // 2])
    code, output = run_cli("--checkpoint", broken, "--output", tmp_path / "o")
    assert_clean_failure(code, output, "cannot read", "truncated.pth")
    assert not (tmp_path / "o").exists()


def test_a_random_file_is_refused_without_torchs_advice(tmp_path):
    noise = tmp_path / "noise.pth"
    noise.write_bytes(np.random.default_rng(0).bytes(2000))
    code, output = run_cli("--checkpoint", noise, "--output", tmp_path / "o")
    assert_clean_failure(code, output, "cannot read", "noise.pth")
    assert "weights_only" not in output and "likely succeed" not in output, output


def test_not_a_sam_state_dict_lists_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.bias": torch.zeros(10)}, path)
    code, output = run_cli("--checkpoint", path, "--output", tmp_path / "o")
    assert_clean_failure(code, output, "not a SAM state_dict", "conv1.weight", "fc.bias")


def test_incomplete_state_dict_lists_missing_and_unexpected(reference, tmp_path):
    state = dict(reference.state_dict())
    del state["mask_decoder.iou_token.weight"]
    del state["image_encoder.blocks.0.attn.rel_pos_h"]
    state["image_encoder.blocks.0.attn.extra.weight"] = torch.zeros(3, 3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    code, output = run_cli("--checkpoint", path, "--output", tmp_path / "o")
    assert_clean_failure(
        code, output, "missing", "mask_decoder.iou_token", "blocks.0.attn.rel_pos_h"
    )
    assert "image_encoder.blocks.0.attn.extra" in output


def test_declared_type_must_match_the_shapes(pth, tmp_path):
    code, output = run_cli("--checkpoint", pth, "--output", tmp_path / "o", "--model-type", "vit_b")
    assert_clean_failure(code, output, "SAM tiny", "--model-type vit_b")


def test_wrapped_state_dict_is_accepted(reference, tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"model": reference.state_dict()}, path)
    assert convert_main(["--checkpoint", str(path), "--output", str(tmp_path / "o")]) == 0


def test_loading_a_directory_without_a_checkpoint_says_how_to_convert(tmp_path):
    with pytest.raises(CheckpointError, match="weights_convert.convert_sam"):
        load_sam(tmp_path)
