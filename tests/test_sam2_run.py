"""The benchmark configs on SAM 2.1 (configs/nwpu_sam2.py, whu_sam2.py, hrsid_sam2.py): what they
change from their SAM configs, `python -m resam_jax.main --config configs/nwpu_sam2.py` training,
evaluating and exporting on a tiny SAM 2 (hiera_test at 64 px, a converted checkpoint) and a tiny
NWPU release, and the SAM 2 family's config errors as one error line."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from data_fixtures import nwpu_release
from ml_collections import config_flags
from sam2_tiny import save_tiny_sam2

from resam_jax import run
from resam_jax.config import SAM2_SIZES
from resam_jax.data.prepare import prepare
from resam_jax.models.sam2 import sam2_config
from resam_jax.models.sam2.build import model_type_of
from resam_jax.models.sam2.checkpoint import load_sam2_params, load_video_only, read_header
from resam_jax.run.reporting import flat_config

REPO = Path(__file__).resolve().parents[1]
LORA_START = 4  # of hiera_test's 8 blocks: the second half, as the configs take it


def load_config(name: str, *overrides: str, variant: str = ""):
    """configs/<name>.py[:variant] as main.py loads it, with --config.* overrides."""
    argv = ["prog", f"--config={REPO}/configs/{name}.py" + (f":{variant}" if variant else "")]
    argv += overrides
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", lock_config=True, flag_values=flag_values, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize("variant", ["", "camera"])
@pytest.mark.parametrize("name", ["nwpu", "whu", "hrsid"])
def test_sam2_configs_are_their_sam_config_on_sam2_b_plus(name, variant):
    sam = flat_config(load_config(name, variant=variant).to_dict())
    sam2 = flat_config(load_config(f"{name}_sam2", variant=variant).to_dict())
    assert sam.keys() == sam2.keys()
    depth = sam2_config(model_type_of("b+")).depth
    assert {k: v for k, v in sam2.items() if sam[k] != v} == {
        "model.family": "sam2",
        "model.model_type": "b+",
        "model.checkpoint": "weights/sam2.1_hiera_b+",
        "model.pixel_norm": "sam",  # SAM2Transforms' ImageNet mean / std, what SAM 2 expects
        "model.lora_start_layer": depth // 2,  # the second half of the blocks: 12 of 24
    }
    assert depth == 24
    assert sam2["model.lora_rank"] == 4 and sam2["model.lora_targets"] == ["q", "v"]
    assert sam2["data.image_size"] == 1024
    assert sam2["method.variant"] == (variant or "v1")


def test_sam2_sizes_are_the_model_family_s():
    for size, (depth, _) in SAM2_SIZES.items():
        assert sam2_config(model_type_of(size)).depth == depth, size


@pytest.fixture(scope="module")
def tiny_run_inputs(tmp_path_factory):
    """A tiny NWPU release, prepared, and a tiny SAM 2 converted checkpoint."""
    root = tmp_path_factory.mktemp("sam2_run")
    manual_dir = nwpu_release(root)
    prepare("nwpu_vhr10", data_dir=root / "tfds", manual_dir=manual_dir)
    checkpoint = save_tiny_sam2(root / "sam2_tiny", image_size=64, seed=7)
    return manual_dir, root / "tfds", checkpoint


def tiny_overrides(tiny_run_inputs) -> list[str]:
    manual_dir, data_dir, checkpoint = tiny_run_inputs
    return [
        f"--config.data.manual_dir={manual_dir}",
        f"--config.data.data_dir={data_dir}",
        "--config.model.model_type=hiera_test",
        f"--config.model.checkpoint={checkpoint}",
        f"--config.model.lora_start_layer={LORA_START}",
        "--config.data.image_size=64",
        "--config.data.max_instances=8",
        "--config.optim.warmup_steps=0",
        "--config.eval.prompt_seeds=1",
        "--config.train.max_steps=2",
        "--config.train.log_every_steps=1",
        "--config.train.num_overlays=1",
    ]


def _lora_of(workdir: Path) -> dict[tuple, np.ndarray]:
    """export/lora as {(block, target, "lora_a" | "lora_b"): array}."""
    tree = ocp.StandardCheckpointer().restore(workdir / "export" / "lora")
    blocks = tree["image_encoder"]["trunk"]["blocks"]
    return {
        (int(i), target[-1], which): np.asarray(value)
        for i, attn in blocks.items()
        for target, pair in attn["attn"].items()
        for which, value in pair.items()
    }


def test_nwpu_sam2_command_trains_evaluates_and_exports(tiny_run_inputs, tmp_path):
    """python -m resam_jax.main --config configs/nwpu_sam2.py on a tiny SAM 2: two ReSAM steps
    that move the LoRA only, the Direct and trained evaluations, and export/sam_merged equal to
    the source checkpoint with exactly A @ B added to the q and v thirds of the LoRA blocks."""
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "resam_jax.main", "--config=configs/nwpu_sam2.py",
         f"--workdir={workdir}", *tiny_overrides(tiny_run_inputs)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RANDOMLY INITIALISED" not in result.stderr  # it loaded the converted checkpoint
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]

    # Trained: two ReSAM steps with finite losses, not skipped.
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["skipped"] == 0 for r in train), train

    # Evaluated: the Direct row and the trained row on the 2 validation images, in the table.
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["label"] for r in evals] == ["Direct SAM (step 0)", "resam epoch 1 (step 2)"]
    for r in evals:
        assert r["images"] == 2 and all(
            0 <= r[k] <= 1 for k in ("iou", "f1", "precision", "recall")
        )
    rows = result.stdout.rstrip().splitlines()[-2:]
    for row, r in zip(rows, evals, strict=True):
        assert row.startswith(r["label"])
        assert float(row[len(r["label"]) :].split()[1]) == pytest.approx(100 * r["iou"], abs=0.01)
    assert list((workdir / "overlays").glob("step_*/*.png"))

    # Exported: the LoRA (B moved from 0), and SAM 2 with it folded in.
    lora = _lora_of(workdir)
    assert {(i, t) for i, t, _ in lora} == {(i, t) for i in range(LORA_START, 8) for t in "qv"}
    assert all(np.abs(lora[i, t, "lora_b"]).max() > 0 for i, t, w in lora if w == "lora_b")
    _, source = load_sam2_params(tiny_run_inputs[2])
    config, merged = load_sam2_params(workdir / "export" / "sam_merged")
    assert config.model_type == "hiera_test" and config.lora_rank is None
    assert merged.keys() == source.keys()
    for path, value in source.items():
        is_qkv = path[-2:] == ("qkv", "kernel") and path[:3] == ("image_encoder", "trunk", "blocks")
        if not is_qkv or path[3] < LORA_START:
            np.testing.assert_array_equal(merged[path], value, err_msg=str(path))
            continue
        width = value.shape[1] // 3
        expected = value.copy()
        for third, target in enumerate("qkv"):
            if target in "qv":
                delta = lora[path[3], target, "lora_a"] @ lora[path[3], target, "lora_b"]
                expected[:, third * width : (third + 1) * width] += delta
        np.testing.assert_allclose(merged[path], expected, rtol=1e-6, atol=1e-7, err_msg=str(path))
        np.testing.assert_array_equal(merged[path][:, width:-width], value[:, width:-width])
    # What the conversion kept beside the weights goes with it (export_sam2 loads strictly).
    header = read_header(workdir / "export" / "sam_merged")
    assert header["source"]["release"] == "2.1" and header["source"]["pixel_norm"] == "sam"
    kept, carried = (
        load_video_only(tiny_run_inputs[2]),
        load_video_only(workdir / "export" / "sam_merged"),
    )
    assert kept.keys() == carried.keys() and kept
    for key in kept:
        np.testing.assert_array_equal(carried[key], kept[key])


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.model.model_type=vit_b", "config.model.model_type='vit_b'; expected one of ('t', 's', 'b+', 'l', 'hiera_t'"),
        ("--config.model.attention=flash", "config.model.attention='flash'; expected one of ('reference', 'chunked', 'dot_product') (model.family='sam2')"),
        ("--config.model.family=sam3", "config.model.family='sam3'; expected one of ('sam', 'sam2')"),
    ],
)  # fmt: skip
def test_a_bad_sam2_field_is_one_error_line(tmp_path, override, message):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "resam_jax.main", "--config=configs/nwpu_sam2.py",
         f"--workdir={workdir}", override],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not workdir.exists()


def test_sam2_checkpoint_and_range_errors_name_the_fix(tiny_run_inputs, tmp_path):
    overrides = tiny_overrides(tiny_run_inputs)
    missing = load_config("nwpu_sam2", *overrides[:2])  # the default weights/sam2.1_hiera_b+
    missing.model.checkpoint = str(tmp_path / "weights" / "sam2.1_hiera_b+")
    with pytest.raises(run.RunError, match=r"python -m weights_convert\.convert_sam2 --checkpoint sam2\.1_hiera_base_plus\.pt"):  # fmt: skip
        run.train_and_evaluate(missing, tmp_path / "run")
    beyond = load_config("nwpu_sam2", *overrides, "--config.model.lora_start_layer=8")
    with pytest.raises(run.RunError, match=r"lora_start_layer=8 must be in 0\.\.7"):
        run.train_and_evaluate(beyond, tmp_path / "run")
    other_size = load_config("nwpu_sam2", *overrides, "--config.data.image_size=128")
    with pytest.raises(
        run.RunError, match=r"SAM 2 for 64x64 inputs but config.data.image_size=128"
    ):
        run.train_and_evaluate(other_size, tmp_path / "run")
    # SAM's LoRA is on q and v only: another choice is refused, not ignored.
    sam = load_config("nwpu", "--config.model.lora_targets=('q', 'k', 'v')")
    with pytest.raises(run.RunError, match=r"lora_targets=\('q', 'k', 'v'\); expected one of \(\('q', 'v'\),\) \(model.family='sam'\)"):  # fmt: skip
        run.train_and_evaluate(sam, tmp_path / "run")
    assert not (tmp_path / "run").exists()
