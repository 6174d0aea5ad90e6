"""method.variant (docs/method.md section 10): the preset's resolution, the dataset configs'
`:camera` argument, and a run that resolves it before anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from absl import flags
from data_fixtures import run_module
from ml_collections import config_flags

from resam_jax.config import METHOD_VARIANTS, base_config, resolve_method_variant

REPO = Path(__file__).resolve().parents[1]


def load_config(spec: str, *overrides: str):
    argv = ["prog", f"--config={REPO}/configs/{spec}", *overrides]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", lock_config=True, flag_values=flag_values, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


def method_switches(config) -> dict:
    return {field: config.method[field] for field in METHOD_VARIANTS["v1"]}


def test_v1_is_the_default_and_resolves_to_itself():
    config = base_config()
    assert config.method.variant == "v1"
    assert method_switches(resolve_method_variant(config)) == METHOD_VARIANTS["v1"]


def test_camera_sets_every_switch_keeps_explicit_ones_and_resolves_once():
    config = base_config()
    config.method.variant = "camera"
    assert method_switches(resolve_method_variant(config)) == METHOD_VARIANTS["camera"]
    assert method_switches(resolve_method_variant(config)) == METHOD_VARIANTS["camera"]

    config = base_config()
    config.method.update(variant="camera", refine_threshold=0.4, ssa_max_weight=0.0)
    resolved = method_switches(resolve_method_variant(config))
    assert resolved == dict(METHOD_VARIANTS["camera"], refine_threshold=0.4, ssa_max_weight=0.0)


@pytest.mark.parametrize(
    "field, value",
    [("variant", "camra"), ("mask_loss", "dice"), ("ssa_source", "bank"), ("outlier_rule", "x")],
)
def test_a_bad_choice_names_the_field_and_the_allowed_values(field, value):
    config = base_config()
    config.method[field] = value
    with pytest.raises(ValueError, match=rf"config\.method\.{field}='{value}'; expected one of"):
        resolve_method_variant(config)


def test_batch_ssa_needs_the_matched_form():
    config = base_config()
    config.method.update(variant="camera", ssa_form="softmax")
    with pytest.raises(ValueError, match="ssa_form='softmax' with ssa_source='batch'"):
        resolve_method_variant(config)


def test_dataset_configs_take_the_camera_argument():
    for name in ("nwpu", "whu", "hrsid"):
        assert load_config(f"{name}.py").method.variant == "v1"
        assert load_config(f"{name}.py:camera").method.variant == "camera"
    assert load_config("hrsid.py").train.num_epochs == 5
    assert load_config("hrsid.py:camera").train.num_epochs == 10  # public camera config_hrsid
    config = resolve_method_variant(load_config("nwpu.py", "--config.method.variant=camera"))
    assert method_switches(config) == METHOD_VARIANTS["camera"]


def test_a_camera_run_resolves_then_stops_at_the_missing_data_or_weights(tmp_path):
    args = ("--config", REPO / "configs/nwpu.py", "--workdir", tmp_path / "run")
    code, output = run_module("resam_jax.main", *args, "--config.method.variant=camera")
    assert code != 0, output
    assert "is not prepared" in output or "no converted SAM checkpoint" in output, output
    code, output = run_module("resam_jax.main", *args, "--config.method.variant=camra")
    assert code != 0
    assert "config.method.variant='camra'; expected one of ('v1', 'camera')" in output, output
