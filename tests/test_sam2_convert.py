"""SAM 2 checkpoint conversion: the key tables cover every key of SAM2Base for all four sizes of
both releases (2.0, 2.1), a random 2.1 / 2.0 checkpoint converts and exports back bit for bit into
a file that `sam2` loads strictly, and what does not fit is refused with a clear error."""

from unittest import mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from sam2_reference import YAML, YAML_2_0, randomize_, released_model  # noqa: E402

from resam_jax.models.sam2 import RELEASED_TYPES, sam2_config  # noqa: E402
from resam_jax.models.sam2.checkpoint import load_sam2_params  # noqa: E402
from resam_jax.models.sam2.params import (  # noqa: E402
    flax_to_torch,
    is_video_only,
    param_shapes,
    torch_to_flax,
)
from weights_convert import convert_sam2  # noqa: E402
from weights_convert.convert_sam2 import main as convert_main  # noqa: E402
from weights_convert.export_sam2 import main as export_main  # noqa: E402

# Derived from the modules in ../shared/docs/SAM2.md; `len(state_dict)` confirms them.
IMAGE_KEYS = {"hiera_t": 311, "hiera_s": 359, "hiera_b+": 455, "hiera_l": 743}
VIDEO_KEYS = {"2.1": 160, "2.0": 157}


def meta_model(model_type: str, version: str):
    """SAM2Base of a release's yaml on the meta device: shapes without memory."""
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = compose(config_name=(YAML if version == "2.1" else YAML_2_0)[model_type])
    OmegaConf.resolve(cfg)
    linspace = torch.linspace  # Hiera reads its drop-path rates with .item()
    cpu_linspace = lambda *args, **kwargs: linspace(*args, **{**kwargs, "device": "cpu"})  # noqa: E731
    with torch.device("meta"), mock.patch("torch.linspace", cpu_linspace):
        return instantiate(cfg.model, _recursive_=True)


@pytest.mark.parametrize("version", ["2.1", "2.0"])
@pytest.mark.parametrize("model_type", RELEASED_TYPES)
def test_tables_cover_sam2_base(model_type, version):
    """Every key is the image model's (in the layout and shape our model expects) or a named
    video-only key; the trunk's block layout (widths, heads, windows, q-pool) is Meta's."""
    reference = meta_model(model_type, version)
    config = sam2_config(model_type)
    state = reference.state_dict()
    arrays = {k: np.broadcast_to(np.float32(0), v.shape) for k, v in state.items()}
    params, video_only, unknown = torch_to_flax(arrays)
    assert not unknown
    assert (len(params), len(video_only)) == (IMAGE_KEYS[model_type], VIDEO_KEYS[version])
    assert all(is_video_only(k) for k in video_only)
    expected = param_shapes(config)
    assert params.keys() == expected.keys()
    assert {p: v.shape for p, v in params.items()} == expected
    assert sorted(flax_to_torch(params)) == sorted(set(state) - set(video_only))

    blocks = reference.image_encoder.trunk.blocks
    layout = [
        (b.dim, b.dim_out, b.attn.num_heads, b.window_size, b.q_stride is not None) for b in blocks
    ]
    assert layout == [
        (s.dim, s.dim_out, s.num_heads, s.window_size, s.q_pool) for s in config.blocks()
    ]
    assert reference.image_encoder.trunk.pos_embed.shape[2:] == config.pos_embed_bkg_size


@pytest.fixture(scope="module", params=["2.1", "2.0"])
def released_checkpoint(request, tmp_path_factory):
    """A random hiera_t of each release saved as Meta saves it: (version, state_dict, .pt)."""
    version = request.param
    reference = released_model("hiera_t", version)
    randomize_(reference, seed=5)
    state_dict = {k: v.clone() for k, v in reference.state_dict().items()}
    path = tmp_path_factory.mktemp(f"sam{version}") / f"sam{version}_hiera_tiny.pt"
    torch.save({"model": state_dict}, path)
    return version, state_dict, path


def test_convert_then_export_is_bit_exact_and_loads_strictly(released_checkpoint, tmp_path, capsys):
    from sam2.build_sam import build_sam2

    version, state_dict, pt = released_checkpoint
    assert convert_main(["--checkpoint", str(pt), "--output", str(tmp_path / "ckpt")]) == 0
    summary = capsys.readouterr().out
    assert f"SAM {version} hiera_t" in summary and "memory_attention" in summary
    assert f"{VIDEO_KEYS[version]} video-only keys" in summary
    config, params = load_sam2_params(tmp_path / "ckpt")
    assert config == sam2_config("hiera_t")
    for path, value in torch_to_flax({k: v.numpy() for k, v in state_dict.items()})[0].items():
        np.testing.assert_array_equal(params[path], value, err_msg=str(path))

    out = tmp_path / "exported.pt"
    assert export_main(["--checkpoint", str(tmp_path / "ckpt"), "--output", str(out)]) == 0
    assert "build_sam2(" in capsys.readouterr().out
    exported = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert exported.keys() == state_dict.keys()
    for key, value in state_dict.items():
        assert exported[key].dtype == value.dtype and torch.equal(exported[key], value), key
    yaml = (YAML if version == "2.1" else YAML_2_0)["hiera_t"]
    build_sam2(yaml, ckpt_path=str(out), device="cpu")  # strict: raises on any key mismatch

    # Converting the same file again is a no-op; exporting over a file is refused.
    assert convert_main(["--checkpoint", str(pt), "--output", str(tmp_path / "ckpt")]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert export_main(["--checkpoint", str(tmp_path / "ckpt"), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def _convert_error(state_dict, tmp_path, capsys, monkeypatch, *flags) -> str:
    arrays = {k: np.asarray(v) for k, v in state_dict.items()}
    monkeypatch.setattr(convert_sam2, "read_state_dict", lambda path: arrays)
    code = convert_main(
        ["--checkpoint", str(tmp_path / "in.pt"), "--output", str(tmp_path / "out"), *flags]
    )
    assert code == 2 and not (tmp_path / "out").exists()
    return capsys.readouterr().err


def test_refuses_what_does_not_fit(released_checkpoint, tmp_path, capsys, monkeypatch):
    _, state_dict, _ = released_checkpoint
    missing = dict(state_dict)
    del missing["sam_mask_decoder.obj_score_token.weight"]
    del missing["image_encoder.trunk.blocks.3.proj.weight"]
    error = _convert_error(missing, tmp_path, capsys, monkeypatch)
    assert "missing (2)" in error
    assert "sam_mask_decoder.obj_score_token.weight" in error
    assert "image_encoder.trunk.blocks.3.proj.weight" in error

    unknown = {**state_dict, "memory_encoder.extra.weight": state_dict["no_mem_embed"]}
    error = _convert_error(unknown, tmp_path, capsys, monkeypatch)
    assert "unexpected (1): memory_encoder.extra.weight" in error

    wrong = {**state_dict, "no_mem_embed": torch.zeros(1, 1, 128)}
    assert "no_mem_embed: checkpoint (1, 1, 128)" in _convert_error(
        wrong, tmp_path, capsys, monkeypatch
    )

    error = _convert_error(state_dict, tmp_path, capsys, monkeypatch, "--model-type", "hiera_l")
    assert "holds a SAM 2 hiera_t" in error and "hiera_l" in error

    sam1 = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}
    error = _convert_error(sam1, tmp_path, capsys, monkeypatch)
    assert "is not a SAM 2 state_dict" in error and "image_encoder.patch_embed" in error


def test_unreadable_file(tmp_path, capsys):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    code = convert_main(
        ["--checkpoint", str(tmp_path / "broken.pt"), "--output", str(tmp_path / "o")]
    )
    assert code == 2 and "cannot read" in capsys.readouterr().err
