"""The merged SAM export computes what the LoRA model computes, and predict loads it."""

import jax
import jax.numpy as jnp
import numpy as np
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
