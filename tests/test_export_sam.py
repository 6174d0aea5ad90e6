"""weights_convert.export_sam: back to Meta's format bit for bit, LoRA folded so that
segment-anything's SamPredictor predicts what ours does, and every refusal."""

import jax
import numpy as np
import pytest
import torch
from flax import nnx
from sam_reference import assert_same_prediction, build_reference, converted_reference
from segment_anything import SamPredictor as TorchPredictor

from resam_jax.config import DEMO_SAM_CHECKPOINT, SMALL_NWPU_SAM_CHECKPOINT
from resam_jax.inference.predictor import SamPredictor
from resam_jax.method.train_state import split_model
from resam_jax.models.sam import load_sam, sam_config
from resam_jax.models.sam.checkpoint import export_merged_sam
from resam_jax.run.checkpoints import export_lora
from weights_convert.convert_sam import main as convert_main
from weights_convert.export_sam import main as export_main

TINY = sam_config("tiny")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A random Meta-layout tiny SAM saved as .pth and converted: (reference, pth, ckpt dir)."""
    return converted_reference(TINY, 21, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def adapted(converted, tmp_path_factory):
    """The converted SAM with a non-zero LoRA on every block, exported as a run exports it:
    (LoRA model, export/sam_merged, export/lora)."""
    _, _, ckpt = converted
    model = load_sam(ckpt, lora_start_layer=0)
    graphdef, lora, frozen = split_model(model)
    keys = iter(jax.random.split(jax.random.key(3), 64))
    lora = jax.tree.map(lambda x: 0.1 * jax.random.normal(next(keys), x.shape), lora)
    root = tmp_path_factory.mktemp("run_export")
    export_merged_sam(root / "sam_merged", lora, frozen, model.config, {"path": str(ckpt)})
    export_lora(root / "lora", lora)
    return nnx.merge(graphdef, lora, frozen), root / "sam_merged", root / "lora"


def export(*args) -> int:
    return export_main([str(a) for a in args])


def torch_load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_round_trip_is_bit_identical(converted, tmp_path):
    _, pth, ckpt = converted
    assert export("--checkpoint", ckpt, "--output", tmp_path / "back.pth") == 0
    original, back = torch_load(pth), torch_load(tmp_path / "back.pth")
    assert back.keys() == original.keys()
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key


@pytest.mark.parametrize(
    "packaged", [DEMO_SAM_CHECKPOINT, SMALL_NWPU_SAM_CHECKPOINT], ids=["tiny_demo", "small_nwpu"]
)
def test_export_then_convert_gives_back_every_packaged_sam(packaged, tmp_path):
    """The demo's tiny SAM takes 128 px inputs, not its type's default: the converter reads the
    input size from the shapes (issue 18)."""
    assert export("--checkpoint", packaged, "--output", tmp_path / "sam.pth") == 0
    back = tmp_path / "back"
    assert convert_main(["--checkpoint", str(tmp_path / "sam.pth"), "--output", str(back)]) == 0
    image = np.random.default_rng(0).integers(0, 256, size=(150, 200, 3), dtype=np.uint8)
    outputs = []
    for checkpoint in (packaged, back):
        model = load_sam(checkpoint)
        predictor = SamPredictor(model)
        predictor.set_image(image)
        outputs.append(
            (model.config.image_size, *predictor.predict(np.array([[60.0, 50.0]]), np.array([1])))
        )
    for original, converted in zip(*outputs, strict=True):
        np.testing.assert_array_equal(converted, original)


@pytest.mark.slow
def test_vit_b_round_trip_loads_in_sam_model_registry(tmp_path):
    from segment_anything import sam_model_registry

    state = build_reference(sam_config("vit_b"), seed=5).state_dict()
    torch.save(state, tmp_path / "vit_b.pth")
    assert (
        convert_main(["--checkpoint", str(tmp_path / "vit_b.pth"), "--output", str(tmp_path / "c")])
        == 0
    )
    out = tmp_path / "adapted_sam_vit_b.pth"
    assert export("--checkpoint", tmp_path / "c", "--output", out, "--model-type", "vit_b") == 0
    loaded = sam_model_registry["vit_b"](checkpoint=str(out)).state_dict()
    for key, tensor in state.items():
        assert torch.equal(loaded[key], tensor), key


@pytest.mark.parametrize("source", ["merged", "base+lora"])
def test_segment_anything_predicts_what_the_lora_model_predicts(
    converted, adapted, tmp_path, source
):
    _, _, ckpt = converted
    lora_model, merged, lora = adapted
    args = (
        ["--checkpoint", merged] if source == "merged" else ["--checkpoint", ckpt, "--lora", lora]
    )
    assert export(*args, "--output", tmp_path / "adapted.pth") == 0
    reference = build_reference(TINY)
    reference.load_state_dict(torch_load(tmp_path / "adapted.pth"))  # strict: every key, no other

    image = np.random.default_rng(1).integers(0, 256, size=(170, 230, 3), dtype=np.uint8)
    torch_predictor, jax_predictor = TorchPredictor(reference), SamPredictor(lora_model)
    torch_predictor.set_image(image)
    jax_predictor.set_image(image)
    plain = SamPredictor(load_sam(ckpt))
    plain.set_image(image)
    for kwargs in (
        dict(point_coords=np.array([[40.0, 60.0], [200.0, 20.0]]), point_labels=np.array([1, 0])),
        dict(box=np.array([20.0, 30.0, 150.0, 120.0]), multimask_output=False),
    ):
        expected = torch_predictor.predict(**kwargs)
        assert_same_prediction(expected, jax_predictor.predict(**kwargs))
        # The LoRA matters: SAM without it predicts something else.
        assert np.abs(plain.predict(**kwargs)[2] - expected[2]).max() > 1e-2


def test_folding_here_equals_the_runs_merged_export(converted, adapted, tmp_path):
    _, _, ckpt = converted
    _, merged, lora = adapted
    assert export("--checkpoint", merged, "--output", tmp_path / "a.pth") == 0
    assert export("--checkpoint", ckpt, "--lora", lora, "--output", tmp_path / "b.pth") == 0
    a, b = torch_load(tmp_path / "a.pth"), torch_load(tmp_path / "b.pth")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_summary_says_how_to_load_and_which_pixels(tmp_path, capsys):
    from resam_jax.config import SMALL_NWPU_SAM_CHECKPOINT  # records pixel_norm "unit"

    assert export("--checkpoint", SMALL_NWPU_SAM_CHECKPOINT, "--output", tmp_path / "s.pth") == 0
    summary = capsys.readouterr().out
    assert "SAM small is not in sam_model_registry" in summary, summary
    assert "sam.pixel_mean.zero_() and sam.pixel_std.fill_(255.0)" in summary, summary


def assert_refused(capsys, output, *fragments):
    message = capsys.readouterr().err
    assert message.startswith("error: ") and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert not output.exists()
    assert not list(output.parent.glob(f".{output.name}.*")), "a temporary file was left"


def test_model_type_mismatch_names_the_checkpoint_and_the_expected_type(
    converted, tmp_path, capsys
):
    _, _, ckpt = converted
    out = tmp_path / "adapted_sam_vit_b.pth"
    assert export("--checkpoint", ckpt, "--output", out, "--model-type", "vit_b") == 2
    assert_refused(capsys, out, str(ckpt), "SAM tiny", "--model-type vit_b")


def test_lora_of_another_size_is_refused(adapted, tmp_path, capsys):
    from resam_jax.config import SMALL_NWPU_SAM_CHECKPOINT

    _, _, lora = adapted
    out = tmp_path / "x.pth"
    assert export("--checkpoint", SMALL_NWPU_SAM_CHECKPOINT, "--lora", lora, "--output", out) == 2
    assert_refused(capsys, out, str(lora), "another SAM size")


@pytest.mark.parametrize("what", ["checkpoint", "lora"])
def test_missing_inputs_are_refused(converted, tmp_path, capsys, what):
    _, _, ckpt = converted
    args = (
        ["--checkpoint", tmp_path / "nothing"] if what == "checkpoint" else ["--checkpoint", ckpt]
    )
    args += ["--lora", tmp_path / "nothing"] if what == "lora" else []
    out = tmp_path / "x.pth"
    assert export(*args, "--output", out) == 2
    assert_refused(capsys, out, str(tmp_path / "nothing"))


def test_an_existing_output_is_not_overwritten(converted, tmp_path, capsys):
    _, _, ckpt = converted
    out = tmp_path / "mine.pth"
    out.write_bytes(b"keep")
    assert export("--checkpoint", ckpt, "--output", out) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep"


def test_a_failed_write_leaves_nothing(converted, tmp_path, monkeypatch, capsys):
    _, _, ckpt = converted
    out = tmp_path / "x.pth"

    def full_disk(obj, f):
        with open(f, "wb") as handle:
            handle.write(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    assert export("--checkpoint", ckpt, "--output", out) == 2
    assert_refused(capsys, out, "cannot write", "No space left")
