"""The merged SAM export computes what the LoRA model computes, and predict loads it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from resam_jax.method.train_state import split_model
from resam_jax.models.sam import Sam, load_sam, sam_config
from resam_jax.models.sam.checkpoint import export_merged_sam, merged_sam_params


def test_merged_checkpoint_equals_lora_model(tmp_path):
    config = sam_config("tiny", image_size=64, lora_start_layer=0)
    model = Sam(config, rngs=nnx.Rngs(0))
    graphdef, lora, frozen = split_model(model)
    # Trained LoRA: B is no longer zero.
    keys = iter(jax.random.split(jax.random.key(1), 64))
    lora = jax.tree.map(lambda x: 0.05 * jax.random.normal(next(keys), x.shape), lora)
    lora_model = nnx.merge(graphdef, lora, frozen)

    export_merged_sam(tmp_path / "merged", lora, frozen, config, {"path": "test"})
    merged = load_sam(tmp_path / "merged")
    assert merged.config.lora_start_layer is None

    images = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
    points = jnp.array([[[[20.0, 30.0], [50.0, 10.0]]]] * 2)
    labels = jnp.array([[[1, 0]]] * 2, jnp.int32)
    outputs = []
    for m in (lora_model, merged):
        embedding = m.encode(images)
        outputs.append((embedding, *m.decode(embedding, points=points, point_labels=labels)))
    plain = nnx.merge(graphdef, jax.tree.map(jnp.zeros_like, lora), frozen).encode(images)
    assert not np.allclose(plain, outputs[0][0], atol=1e-3)  # the LoRA matters
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_merge_adds_products_to_q_and_v_thirds_only():
    config = sam_config("tiny", image_size=64, lora_start_layer=1)
    _, lora, frozen = split_model(Sam(config, rngs=nnx.Rngs(0)))
    lora = jax.tree.map(jnp.ones_like, lora)
    merged = merged_sam_params(lora, frozen)
    before = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(frozen)}
    dim = config.encoder_embed_dim
    for block in range(config.encoder_depth):
        path = ("image_encoder", "blocks", block, "attn", "qkv", "kernel")
        delta = merged[path] - before[path]
        expected = config.lora_rank if block >= 1 else 0.0
        np.testing.assert_allclose(delta[:, :dim], expected, rtol=1e-6)
        np.testing.assert_allclose(delta[:, dim : 2 * dim], 0.0)
        np.testing.assert_allclose(delta[:, 2 * dim :], expected, rtol=1e-6)


@pytest.fixture(scope="module")
def run_outputs(tmp_path_factory):
    """A run's workdir as the loop writes it: export/lora, export/sam_merged, checkpoints/3."""
    import grain

    from resam_jax.run.checkpoints import TrainCheckpoints, export_lora

    workdir = tmp_path_factory.mktemp("run")
    config = sam_config("tiny", image_size=64, lora_start_layer=1)
    graphdef, lora, frozen = split_model(Sam(config, rngs=nnx.Rngs(0)))
    export_lora(workdir / "export" / "lora", lora)
    export_merged_sam(workdir / "export" / "sam_merged", lora, frozen, config, {"path": "test"})
    checkpoints = TrainCheckpoints(workdir / "checkpoints", keep=1)
    data = iter(grain.MapDataset.range(4).to_iter_dataset())
    checkpoints.save(3, {"lora": nnx.to_pure_dict(lora)}, data)
    checkpoints.close()
    return workdir


@pytest.mark.parametrize(
    "folder,what",
    [
        ("export/lora", "it is a LoRA export"),
        ("checkpoints", "it is a run's training checkpoint"),
        ("checkpoints/3", "it is a run's training checkpoint"),
        (".", "it is a run's workdir"),
    ],
)
def test_a_run_folder_passed_as_sam_says_what_it_is_and_what_to_pass(
    run_outputs, tmp_path, capsys, folder, what
):
    """predict and the run name the folder's kind and the merged export (issue 18)."""
    from PIL import Image

    from resam_jax import run
    from resam_jax.config import base_config
    from resam_jax.inference.image import main as predict

    checkpoint = (run_outputs / folder).resolve()
    instead = f"pass {run_outputs / 'export' / 'sam_merged'} (SAM with the run's LoRA folded in)"
    Image.new("RGB", (40, 30)).save(tmp_path / "in.png")
    argv = ["--checkpoint", str(checkpoint), "--image", str(tmp_path / "in.png")]
    code = predict([*argv, "--point", "5,5,1", "--output", str(tmp_path / "out.npz")])
    error = capsys.readouterr().err
    assert code == 2 and what in error and instead in error, error
    assert f"--output {checkpoint}" not in error  # never convert into the run's folder

    config = base_config()
    config.model.update(model_type="tiny", checkpoint=str(checkpoint))
    config.data.image_size = 64
    with pytest.raises(run.RunError) as raised:
        run.build_model(config)
    assert what in str(raised.value) and instead in str(raised.value)
    assert f"--output {checkpoint}" not in str(raised.value)
