"""The run on a tiny SAM and a small synthetic dataset: configs, errors, resume, the demo CLI."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from ml_collections import config_flags

from resam_jax import run
from resam_jax.data.prepare import prepare
from resam_jax.run import reporting

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("nwpu", "whu", "hrsid", "demo")


def load_config(name: str, *overrides: str):
    from absl import flags

    argv = ["prog", f"--config={REPO}/configs/{name}.py", *overrides]
    flag_values = flags.FlagValues()
    # As main.py defines it; sys_argv stands in for the command line.
    config_flags.DEFINE_config_file(
        "config", lock_config=True, flag_values=flag_values, sys_argv=argv
    )
    flag_values(argv)
    return flag_values.config


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Runs in one test compile the same steps: share the compiled programs between them."""
    cache = str(tmp_path_factory.mktemp("jax_cache"))
    previous = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
    )
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    yield cache
    jax.config.update("jax_compilation_cache_dir", previous[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])


def small_config(synthetic_data, **train_overrides):
    manual_dir, data_dir = synthetic_data
    config = load_config(
        "demo",
        f"--config.data.manual_dir={manual_dir}",
        f"--config.data.data_dir={data_dir}",
        "--config.data.synthetic_images=8",
        "--config.data.image_size=64",
        "--config.model.checkpoint=",  # random init: the packaged tiny SAM is for 128 inputs
        "--config.data.batch_size=2",
        "--config.method.mode=supervised",  # trains from step 1 even with a random teacher
        "--config.optim.warmup_steps=0",
        "--config.train.eval_before_training=False",
        "--config.train.num_overlays=0",
    )
    config.train.update(train_overrides)
    return config


# What each benchmark config must hold: the public code's per-dataset settings
# (docs/method.md sections 4 and 6) ...
BENCHMARKS = {
    "nwpu": dict(dataset="nwpu_vhr10", dataset_config="default", eval_split="val",
                 lora_start_layer=6, milestones=(2000, 4000), num_epochs=10),
    "whu": dict(dataset="whu_building", dataset_config="default", eval_split="val",
                lora_start_layer=1, milestones=(8000, 15000), num_epochs=10),
    "hrsid": dict(dataset="hrsid", dataset_config="inshore", eval_split="test",
                  lora_start_layer=1, milestones=(1500, 2000), num_epochs=5),
}  # fmt: skip
# ... and the published protocol (docs/method.md section 9), the same for all three.
PUBLISHED_PROTOCOL = {
    "eval.reduction": "per_instance",
    "eval.threshold_on": "logits",
    "eval.prompt": "points",
    "eval.prompt_seeds": 3,
    "model.pixel_norm": "unit",
    "model.model_type": "vit_b",
    "model.lora_rank": 4,
    "data.image_size": 1024,
    "data.pad": "center",
    "data.num_points": 1,
    "data.max_instances": 50,
    "data.batch_size": 1,
    "data.negative_points": "frame",
    "data.strong_before_resize": True,
    "method.mode": "resam",
    "method.iou_target_on": "logits",
    "method.outlier_rule": "public",
    "method.outlier_window": 50,
    "method.outlier_factor": 4.0,
    "method.refine_threshold": 0.3,
    "method.ema_rate": 0.0,
    "method.focal_weight": 20.0,
    "method.dice_weight": 1.0,
    "method.iou_weight": 1.0,
    "method.ssa_form": "matched",
    "method.ssa_queue_size": 32,
    "method.ssa_max_weight": 4.0,
    "optim.lr": 5e-4,
    "optim.weight_decay": 1e-4,
    "optim.warmup_steps": 250,
    "optim.decay": 0.1,
    "seed": 1337,
}


def _field(config, dotted):
    for part in dotted.split("."):
        config = config[part]
    return config


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_configs_hold_the_public_settings_and_the_published_protocol(name):
    config = load_config(name)
    expected = BENCHMARKS[name]
    assert (config.data.dataset, config.data.dataset_config, config.data.eval_split) == (
        expected["dataset"], expected["dataset_config"], expected["eval_split"]
    )  # fmt: skip
    assert config.model.lora_start_layer == expected["lora_start_layer"]
    assert tuple(config.optim.milestones) == expected["milestones"]
    assert config.train.num_epochs == expected["num_epochs"]
    for field, value in PUBLISHED_PROTOCOL.items():
        assert _field(config, field) == value, field


def test_demo_config_loads():
    config = load_config("demo")
    assert config.method.mode in run.MODES
    assert config.eval.prompt_seeds == 1 and config.eval.reduction == "per_instance"


def test_override_changes_a_field_and_unknown_key_is_rejected():
    assert load_config("nwpu", "--config.method.ema_rate=0.99").method.ema_rate == 0.99
    with pytest.raises(Exception, match="no_such_field"):
        load_config("nwpu", "--config.train.no_such_field=1")


def test_help_lists_the_config_fields_with_their_defaults():
    result = subprocess.run(
        [sys.executable, "-m", "resam_jax.main", "--help"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--workdir" in result.stdout and "--verbose" in result.stdout
    assert "--config.train.num_epochs=10" in result.stdout
    assert "--config.model.attention='chunked'" in result.stdout


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.train.num_epoch=3", 'Did you mean "num_epochs"'),
        ("--config.train.num_epochs=abc", "invalid literal for int()"),
    ],
)
def test_cli_reports_a_bad_override_without_traceback(override, message):
    result = subprocess.run(
        [sys.executable, "-m", "resam_jax.main", "--config=configs/demo.py", "--workdir=/nonexistent", override],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and message in result.stderr, result.stderr


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder nobody may write in: root ignores permission bits, not sysfs."""
    if os.geteuid() == 0:
        return Path("/sys")
    (tmp_path / "ro").mkdir(mode=0o555)
    return tmp_path / "ro"


@pytest.mark.parametrize(
    "case,message",
    [
        ("read-only-workdir", "is not a writable folder"),
        ("file-as-parent", "is not a writable folder: Not a directory"),
        ("missing-config", "--config configs/no_such_config.py does not exist"),
        ("attention", "config.model.attention='fast'; expected one of ('reference', 'chunked'"),
        ("num-epochs", "config.train.num_epochs=0 must be at least 1"),
    ],
)
def test_bad_input_is_one_error_line_and_leaves_nothing_behind(tmp_path, case, message):
    """Checked where the config is resolved, before anything is written (issue 18)."""
    workdir = tmp_path / "run"
    config, extra = "configs/demo.py", []
    if case == "read-only-workdir":
        workdir = _read_only_dir(tmp_path) / "resam_run"
    elif case == "file-as-parent":
        (tmp_path / "file").write_text("")
        workdir = tmp_path / "file" / "run"
    elif case == "missing-config":
        config = "configs/no_such_config.py"
    elif case == "attention":
        extra = ["--config.model.attention=fast"]
    else:
        extra = ["--config.train.num_epochs=0"]
    result = subprocess.run(
        [sys.executable, "-m", "resam_jax.main", f"--config={config}", f"--workdir={workdir}", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
    assert result.stderr.count(message) == 1 and "Traceback" not in result.stderr  # said once
    assert not workdir.exists()


def test_a_step_option_out_of_range_is_a_run_error(tmp_path, synthetic_data):
    config = small_config(synthetic_data)
    config.train.instance_chunk_size = -1
    with pytest.raises(run.RunError, match=r"train\.instance_chunk_size=-1 must be 0 or positive"):
        run.train_and_evaluate(config, tmp_path / "run")


def test_missing_dataset_and_checkpoint_name_the_fix(tmp_path, synthetic_data):
    config = load_config("nwpu", f"--config.data.data_dir={tmp_path / 'tfds'}")
    with pytest.raises(
        run.RunError, match=r"python -m resam_jax\.data\.prepare --dataset nwpu_vhr10"
    ):
        run.train_and_evaluate(config, tmp_path / "run")
    config = small_config(synthetic_data)
    config.model.model_type = "vit_b"
    config.model.checkpoint = str(tmp_path / "weights" / "sam_vit_b")
    with pytest.raises(
        run.RunError, match=r"sam_vit_b_01ec64\.pth.*\n.*weights_convert\.convert_sam"
    ):
        run.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # the run created it, and failed before training


def _lora(workdir: Path):
    return jax.tree.leaves(ocp.StandardCheckpointer().restore(workdir / "export" / "lora"))


def _train_records(workdir: Path):
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == "train"]


def test_checkpoint_of_another_model_type_is_refused(tmp_path, synthetic_data):
    from resam_jax.config import DEMO_SAM_CHECKPOINT

    config = small_config(synthetic_data)
    config.model.model_type = "vit_b"
    config.model.checkpoint = str(DEMO_SAM_CHECKPOINT)
    with pytest.raises(run.RunError, match=r"holds SAM tiny, but config.model.model_type='vit_b'"):
        run.train_and_evaluate(config, tmp_path / "run")


def test_resumed_run_matches_uninterrupted_run(tmp_path, synthetic_data):
    # 8 training images, global batch 2: 4 steps per epoch; stop after 3, resume to 6.
    steps = dict(num_epochs=2, log_every_steps=1, checkpoint_every_steps=3)
    full = run.train_and_evaluate(small_config(synthetic_data, **steps), tmp_path / "full")
    assert full["steps"] == 8

    resumed_dir = tmp_path / "resumed"
    first = run.train_and_evaluate(small_config(synthetic_data, max_steps=3, **steps), resumed_dir)
    assert first["steps"] == 3
    second = run.train_and_evaluate(small_config(synthetic_data, **steps), resumed_dir)
    assert second["steps"] == 8

    for a, b in zip(_lora(tmp_path / "full"), _lora(resumed_dir), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    full_losses = {r["step"]: r["loss"] for r in _train_records(tmp_path / "full")}
    resumed_losses = {r["step"]: r["loss"] for r in _train_records(resumed_dir)}
    assert resumed_losses.keys() == full_losses.keys() == set(range(1, 9))
    np.testing.assert_allclose(
        [resumed_losses[s] for s in range(1, 9)], [full_losses[s] for s in range(1, 9)], rtol=1e-5
    )
    assert full["evaluations"][-1][1] == pytest.approx(second["evaluations"][-1][1])
    exported = ocp.StandardCheckpointer().restore(resumed_dir / "export" / "lora")
    b_leaves = [
        leaf for path, leaf in jax.tree_util.tree_leaves_with_path(exported)
        if "lora_b" in jax.tree_util.keystr(path)
    ]  # fmt: skip
    # LoRA A is random from step 0; only B shows that the resumed run trained.
    assert b_leaves and all(np.abs(leaf).max() > 0 for leaf in b_leaves)


def test_demo_command_writes_every_output(tmp_path):
    """The README's first command as it is (about a minute and a half on two CPU cores): every
    output, and the table it ends with, where ReSAM beats Direct SAM and Supervised beats both."""
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "resam_jax.main", "--config", "configs/demo.py", "--workdir", str(workdir)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "configs/nwpu.py" in result.stdout
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert len(evals) == 2 and {"iou", "f1", "precision", "recall"} <= evals[0].keys()
    train_records = [r for r in records if r["kind"] == "train"]
    assert train_records and all(
        r["skipped"] < 1 and r["pseudo_label_kept_fraction"] > 0.5 for r in train_records
    )
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["24", "48", "72"]  # fmt: skip
    assert (workdir / "export" / "lora").is_dir()
    assert (workdir / "export" / "sam_merged" / "sam_checkpoint.json").is_file()
    assert len(list((workdir / "overlays").glob("step_*/*.png"))) == 8
    assert (workdir / "supervised" / "export" / "lora").is_dir()
    assert (workdir / "camera" / "export" / "lora").is_dir()  # train.compare_variants
    assert "RANDOMLY INITIALISED" not in result.stderr  # it starts from the packaged SAM

    # Quiet by default (issue 18): no library chatter, the table once, at the end of stdout.
    for noise in ("Load dataset info", "Downloading and preparing", "libtpu", "Traceback"):
        assert noise not in result.stderr + result.stdout, noise
    assert result.stdout.count("Direct SAM (step 0)") == 1, result.stdout
    assert f"Outputs in {workdir.resolve()}" in result.stdout
    # The output ends with the four rows; IoU is the third column. Measured: Direct 47.3,
    # ReSAM 53.4, ReSAM camera 36.9, Supervised 71.1; the margins asked for here are a third of
    # those or less (the camera row is only checked to be there: docs/method.md section 10).
    rows = result.stdout.rstrip().splitlines()[-4:]
    labels = [
        "Direct SAM (step 0)", "resam epoch 3 (step 72)", "resam camera epoch 3 (step 72)",
        "supervised epoch 3 (step 72)",
    ]  # fmt: skip
    assert [row.startswith(label) for row, label in zip(rows, labels)] == [True] * 4, rows
    del rows[2], labels[2]
    direct, resam, supervised = (
        float(row[len(label) :].split()[1]) for row, label in zip(rows, labels)
    )
    assert direct == pytest.approx(100 * evals[0]["iou"], abs=0.01) and direct > 10
    assert resam > direct + 1, rows
    assert supervised > resam + 5, rows


@pytest.mark.slow
def test_nwpu_config_trains_on_the_real_benchmark(nwpu_dir, tmp_path):
    """configs/nwpu.py on the real NWPU VHR-10, with the packaged tiny SAM in place of ViT-B:
    prepare, Direct evaluation of all 130 val images, a few ReSAM steps, export."""
    from resam_jax.config import DEMO_SAM_CHECKPOINT

    data_dir = tmp_path / "tfds"
    summary = prepare("nwpu_vhr10", data_dir=data_dir, manual_dir=nwpu_dir)
    assert summary["splits"]["val"]["images"] == 130
    config = load_config(
        "nwpu",
        "--config.model.model_type=tiny",
        f"--config.model.checkpoint={DEMO_SAM_CHECKPOINT}",
        "--config.model.lora_start_layer=0",
        "--config.data.image_size=128",
        f"--config.data.data_dir={data_dir}",
        f"--config.data.manual_dir={nwpu_dir}",
        "--config.train.max_steps=4",
        "--config.train.num_overlays=1",
    )
    result = run.train_and_evaluate(config, tmp_path / "run")
    assert result["steps"] == 4
    (direct_label, direct), (_, final) = result["evaluations"]
    assert direct_label.startswith("Direct SAM") and direct["images"] == final["images"] == 130
    assert 0 < direct["iou"] < 1
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(r["kind"] == "train" and r["skipped"] < 1 for r in records)
    assert (tmp_path / "run" / "export" / "sam_merged" / "sam_checkpoint.json").is_file()


def test_resume_after_a_kill_logs_each_step_once_and_refuses_a_changed_config(
    tmp_path, synthetic_data
):
    """A run killed after step 4 whose last checkpoint is step 3 logs step 4 again on resume:
    the interrupted run's rows after step 3 are dropped, the final table keeps the evaluations
    of both runs, and a changed field that alters training is refused (a cadence is not)."""
    import shutil

    workdir = tmp_path / "run"
    steps = dict(
        num_epochs=2, log_every_steps=1, checkpoint_every_steps=3, max_steps=4, eval_every_epochs=1
    )
    run.train_and_evaluate(small_config(synthetic_data, **steps), workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")  # as if killed before step 4 was saved
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["method.mode"] == "supervised" and saved["train.max_steps"] == 4

    changed = small_config(synthetic_data, **{**steps, "max_steps": 0})
    changed.method.focal_weight = 10.0
    with pytest.raises(run.RunError, match=r"method.focal_weight: 20.0 -> 10.0"):
        run.train_and_evaluate(changed, workdir)

    resumed = run.train_and_evaluate(
        small_config(synthetic_data, **{**steps, "max_steps": 0, "log_every_steps": 2}), workdir
    )
    assert resumed["steps"] == 8
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4, 6, 8]  # step 4 once, from the resumed run
    evaluations = [(r["step"], r["label"]) for r in records if r["kind"] == "eval"]
    assert [label for label, _ in resumed["evaluations"]] == [label for _, label in evaluations]
    assert [s for s, _ in evaluations] == [4, 8]  # epoch 1 (step 4, re-run) and epoch 2


def test_a_run_killed_during_its_last_evaluation_evaluates_again_on_resume(
    tmp_path, synthetic_data, monkeypatch
):
    """Killed while scoring the last epoch (after its last step): the same command must end with
    that epoch's row, not report the epoch before as the final one."""
    from resam_jax.run import loop

    workdir = tmp_path / "run"
    steps = dict(num_epochs=2, log_every_steps=1, checkpoint_every_steps=3, eval_every_epochs=1)
    evaluate = loop._Run.evaluate

    def killed_at_the_last(self, step, label, student_lora, teacher_lora):
        if step == 8:
            raise KeyboardInterrupt  # the session ends mid-evaluation
        evaluate(self, step, label, student_lora, teacher_lora)

    with monkeypatch.context() as patch:
        patch.setattr(loop._Run, "evaluate", killed_at_the_last)
        with pytest.raises(KeyboardInterrupt):
            run.train_and_evaluate(small_config(synthetic_data, **steps), workdir)
    resumed = run.train_and_evaluate(small_config(synthetic_data, **steps), workdir)
    assert resumed["steps"] == 8
    assert [label for label, _ in resumed["evaluations"]] == [
        "supervised epoch 1 (step 4)",
        "supervised epoch 2 (step 8)",
    ]


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_continues_exactly(
    tmp_path, synthetic_data, monkeypatch
):
    """A preempted VM gets SIGTERM: the run saves a checkpoint after the current step, stops
    without exporting, and the same command resumes to the parameters of an uninterrupted run."""
    steps = dict(num_epochs=4, log_every_steps=1, checkpoint_every_steps=100, eval_every_epochs=4)
    full = run.train_and_evaluate(small_config(synthetic_data, **steps), tmp_path / "full")
    workdir = tmp_path / "preempted"

    with _terminate_once(monkeypatch, workdir, 2):
        first = run.train_and_evaluate(small_config(synthetic_data, **steps), workdir)
    assert first["preempted"] and first["steps"] == 2 and full["steps"] == 16
    assert (workdir / "checkpoints" / str(first["steps"])).is_dir()
    assert not (workdir / "export").exists()

    second = run.train_and_evaluate(small_config(synthetic_data, **steps), workdir)
    assert second["steps"] == 16 and not second["preempted"]
    for a, b in zip(_lora(tmp_path / "full"), _lora(workdir), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert [r["step"] for r in _train_records(workdir)] == list(range(1, 17))
    # eval_every_epochs=4: one evaluation, after the 4th epoch (none after epochs 1-3).
    assert [label for label, _ in second["evaluations"]] == ["supervised epoch 4 (step 16)"]

    # export/lora holds exactly the trained LoRA.
    def by_path(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {
            jax.tree_util.keystr(k).replace("'", "").removesuffix(".value"): np.asarray(v)
            for k, v in leaves
        }

    trained = by_path(second["lora"])
    exported = by_path(ocp.StandardCheckpointer().restore(workdir / "export" / "lora"))
    assert trained.keys() == exported.keys() and len(trained) == 8
    for name in trained:
        np.testing.assert_array_equal(trained[name], exported[name], err_msg=name)


@contextlib.contextmanager
def _terminate_once(monkeypatch, workdir: Path, step: int):
    """SIGTERM to this process once train step `step` is logged under `workdir` (a preempted VM).

    Sent from the loop's own thread as the row is written, so the loop sees it before its next
    step: a watcher thread polling metrics.jsonl raced the last steps of a short phase (CI).
    """
    write = reporting.MetricWriter.write
    sent = []

    def write_then_terminate(self, at, kind, scalars, label=None):
        write(self, at, kind, scalars, label)
        if not sent and kind == "train" and at >= step and self._path.parent == workdir:
            sent.append(at)
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(reporting.MetricWriter, "write", write_then_terminate)
        yield sent
    assert sent == [step], f"no SIGTERM at step {step} under {workdir}: {sent}"


def test_every_phase_resumes_after_sigterm_and_says_what_a_resumed_epoch_covers(
    tmp_path, synthetic_data, monkeypatch
):
    """ReSAM, then the Supervised comparison: SIGTERM in either phase checkpoints and stops,
    and the same call goes on (issue 18: the supervised phase died with an IndexError)."""
    steps = dict(num_epochs=1, log_every_steps=1, checkpoint_every_steps=100)
    config = small_config(synthetic_data, compare_with_supervised=True, **steps)
    config.method.mode = "resam"
    workdir = tmp_path / "run"

    with _terminate_once(monkeypatch, workdir, 2):  # within ReSAM's only epoch
        first = run.train_and_evaluate(config, workdir)
    assert first["preempted"] and first["steps"] == 2

    with _terminate_once(monkeypatch, workdir / "supervised", 2):
        second = run.train_and_evaluate(config, workdir)
    assert second["preempted"] and not (workdir / "supervised" / "export").exists()
    # The epoch's pseudo-label row covers the steps after the resume, and says so.
    [(label, _)] = second["pseudo_labels"]
    assert label == f"epoch 1 (step 4, resumed: steps {first['steps'] + 1}-4 only)"

    third = run.train_and_evaluate(config, workdir)
    assert not third["preempted"] and third["steps"] == 4
    labels = [label for label, _ in third["evaluations"]]  # (a compared variant's in between)
    assert labels[0] == "resam epoch 1 (step 4)" and labels[-1] == "supervised epoch 1 (step 4)"
    assert (workdir / "supervised" / "export" / "sam_merged").is_dir()


def test_a_run_stopped_by_sigterm_exits_143(tmp_path, synthetic_data):
    """After its checkpoint, so that a scheduler tells it from a finished run (docs/training.md)."""
    manual_dir, data_dir = synthetic_data
    workdir = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "resam_jax.main", "--config=configs/demo.py", f"--workdir={workdir}",
         f"--config.data.manual_dir={manual_dir}", f"--config.data.data_dir={data_dir}",
         "--config.data.synthetic_images=8", "--config.data.image_size=64",
         "--config.model.checkpoint=", "--config.data.batch_size=2",
         "--config.train.eval_before_training=False", "--config.train.num_overlays=0",
         "--config.train.log_every_steps=1", "--config.train.num_epochs=50"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    metrics, deadline = workdir / "metrics.jsonl", time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and '"kind": "train"' in metrics.read_text():
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 143, stderr[-3000:]
    assert "Traceback" not in stderr and list((workdir / "checkpoints").iterdir())
    assert not (workdir / "export").exists()


def test_study_config_adapts_the_packaged_small_sam_on_the_target_half():
    from resam_jax.models.sam.checkpoint import read_header

    config = load_config("study_nwpu")
    header = read_header(config.model.checkpoint)
    assert header["model_type"] == config.model.model_type == "small"
    assert header["config"]["image_size"] == config.data.image_size
    # The source model saw the first half of NWPU train; the study adapts on the other.
    assert "first half" in header["source"]["train_data"]
    assert config.data.train_images == "second_half" and config.data.dataset == "nwpu_vhr10"
    assert header["source"]["pixel_norm"] == config.model.pixel_norm == "unit"
    # Native resolution: the model was trained on tiles of the size the study cuts, one tile
    # per input (no resizing).
    assert "native-resolution tiles of 384 px" in header["source"]["train_data"]
    assert config.data.tile_size == config.data.image_size == 384
