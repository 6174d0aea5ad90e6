"""SAM 2 behind the backbone contract (resam_jax.models.build with family "sam2") and LoRA on the
Hiera attention: adapters sized by each block's output width, the gradients w.r.t. LoRA equal to
torch autograd through `sam2` 1.1.0 with the same LoRA added to its qkv (hiera_test, every tensor
randomised, B non-zero), the merged export equal to the adapted model, and the method's train step
running on it unchanged."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from sam2_reference import build_reference, nchw, numpy_state_dict  # noqa: E402

from resam_jax import models  # noqa: E402
from resam_jax.models.sam2 import Sam2, sam2_config  # noqa: E402
from resam_jax.models.sam2.checkpoint import load_sam2, sam2_from_params, save_sam2_params  # noqa: E402
from resam_jax.models.sam2.params import torch_to_flax  # noqa: E402

BASE = sam2_config("hiera_test")
START = 1  # from the first q-pool block (16 -> 32 wide) on


def reference_params(seed):
    reference = build_reference(BASE, seed=seed)
    params, _, unknown = torch_to_flax(numpy_state_dict(reference))
    assert not unknown, unknown
    return reference, params


def randomize_lora(model: Sam2, seed: int) -> None:
    """A and B drawn at random (B = 0 would make every gradient w.r.t. A zero)."""
    rng = np.random.default_rng(seed)
    for _, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        v.set_value(jnp.asarray(0.3 * rng.standard_normal(v.get_value().shape), jnp.float32))


class LoraQkv(torch.nn.Module):
    """sam2's attn.qkv plus x @ A @ B on the chosen thirds (A [dim, r], B [r, dim_out])."""

    def __init__(self, qkv, adapters):
        super().__init__()
        self.qkv = qkv
        self.adapters = torch.nn.ParameterDict(
            {k: torch.nn.Parameter(torch.from_numpy(np.array(v))) for k, v in adapters.items()}
        )

    def forward(self, x):
        out = self.qkv(x)
        dim_out = out.shape[-1] // 3
        parts = []
        for target in "qkv":
            if f"{target}_a" in self.adapters:
                parts.append(x @ self.adapters[f"{target}_a"] @ self.adapters[f"{target}_b"])
            else:
                parts.append(out.new_zeros(*out.shape[:-1], dim_out))
        return out + torch.cat(parts, -1)


def torch_with_lora(reference, model: Sam2):
    """Wrap the reference's qkv of every block with the model's LoRA; -> {path: torch param}."""
    lora = {
        p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))
    }
    handles = {}
    for i in model.config.lora_blocks():
        prefix = ("image_encoder", "trunk", "blocks", i, "attn")
        adapters = {f"{p[-2][-1]}_{p[-1][-1]}": v for p, v in lora.items() if p[:5] == prefix}
        attn = reference.image_encoder.trunk.blocks[i].attn
        attn.qkv = LoraQkv(attn.qkv, adapters)
        for name, param in attn.qkv.adapters.items():
            target, which = name.split("_")
            handles[prefix + (f"lora_{target}", f"lora_{which}")] = param
    return handles


def torch_features(reference, images):
    backbone_out = reference.forward_image(images)
    _, feats, _, sizes = reference._prepare_backbone_features(backbone_out)
    feats[-1] = feats[-1] + reference.no_mem_embed
    b = images.shape[0]
    return [f.permute(1, 0, 2).reshape(b, *s, -1) for f, s in zip(feats, sizes)]  # NHWC


@pytest.mark.parametrize("targets", [("q", "v"), ("q", "k", "v")], ids=["qv", "qkv"])
def test_lora_gradients_match_torch_autograd(targets):
    config = dataclasses.replace(BASE, lora_rank=3, lora_start_layer=START, lora_targets=targets)
    reference, params = reference_params(seed=41)
    model = sam2_from_params(config, params)
    # Adapters sized by each block's output width (q-pool blocks widen).
    for i, spec in enumerate(config.blocks()):
        attn = model.image_encoder.trunk.blocks[i].attn
        for t in "qkv":
            lora = getattr(attn, f"lora_{t}")
            if i < START or t not in targets:
                assert lora is None
            else:
                assert lora.lora_a.shape == (spec.dim, 3)
                assert lora.lora_b.shape == (3, spec.dim_out)
    assert any(s.dim != s.dim_out for s in config.blocks()[START:])
    randomize_lora(model, seed=42)
    handles = torch_with_lora(reference, model)

    rng = np.random.default_rng(43)
    images = rng.standard_normal((2, BASE.image_size, BASE.image_size, 3)).astype(np.float32)
    features = nnx.eval_shape(lambda: model.encode(jnp.asarray(images)))
    shapes = [features["high_res_feats"][0].shape, features["high_res_feats"][1].shape]
    shapes = [*shapes, features["image_embed"].shape]
    weights = [rng.standard_normal(s).astype(np.float32) for s in shapes]

    # torch: SAM2ImagePredictor's features (conv_s0 / conv_s1 applied, no_mem_embed added).
    torch_loss = sum(
        (f * torch.from_numpy(w)).sum()
        for f, w in zip(torch_features(reference, nchw(images)), weights)
    )
    torch_loss.backward()

    graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)

    def loss(lora):
        features = nnx.merge(graphdef, lora, rest).encode(jnp.asarray(images))
        levels = [*features["high_res_feats"], features["image_embed"]]
        return sum((f * w).sum() for f, w in zip(levels, weights))

    jax_loss, grads = jax.value_and_grad(loss)(lora)
    print(f"{targets}: loss {float(jax_loss):.6g} / torch {torch_loss.item():.6g}")
    assert abs(float(jax_loss) - float(torch_loss)) <= 1e-4 * abs(float(torch_loss)) + 1e-3
    flat = dict(nnx.to_flat_state(grads))
    assert set(flat) == set(handles)
    worst = 0.0
    for path, param in handles.items():
        expected = param.grad.numpy()
        actual = np.asarray(flat[path].get_value())
        assert np.abs(expected).max() > 0, path
        worst = max(worst, np.abs(actual - expected).max() / np.abs(expected).max())
    print(f"{targets}: {len(handles)} LoRA tensors, max |grad diff| / max |grad| {worst:.2e}")
    assert worst <= 1e-4


def _run_config(checkpoint="", **model):
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data = ml_collections.ConfigDict(dict(image_size=BASE.image_size))
    fields = dict(
        family="sam2",
        model_type="hiera_test",
        checkpoint=checkpoint,
        lora_rank=4,
        lora_start_layer=5,
        dtype="float32",
        pixel_norm="sam",
        attention="chunked",
        attention_chunk_size=128,
        remat="blocks",
    )
    config.model = ml_collections.ConfigDict({**fields, **model})
    return config


def test_backbone_contract_and_merged_export(tmp_path):
    _, params = reference_params(seed=51)
    save_sam2_params(tmp_path / "ckpt", params, BASE, {"path": "random hiera_test"})
    config = _run_config(str(tmp_path / "ckpt"), lora_targets=("q", "k", "v"))
    model = models.build(config)
    assert isinstance(model, Sam2) and model.config.lora_blocks() == range(5, BASE.depth)
    lora = nnx.state(model, models.LORA)
    assert len(nnx.to_flat_state(lora)) == 2 * 3 * (BASE.depth - 5)

    rng = np.random.default_rng(5)
    s = BASE.image_size
    images = jnp.asarray(rng.integers(0, 256, (2, s, s, 3), dtype=np.uint8))
    content = jnp.zeros((2, s, s), bool).at[:, :, : s - 40].set(True)
    embedding = model.encode_pixels(images, content)
    # B = 0: the adapted model starts as the converted one.
    plain = load_sam2(tmp_path / "ckpt")
    start = plain.encode(
        jnp.where(
            content[..., None],
            (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
            0.0,
        )  # fmt: skip
    )
    assert np.abs(np.asarray(embedding["image_embed"] - start["image_embed"])).max() < 1e-4

    feature_map, stride = model.features(embedding)
    assert feature_map.shape == (2, s // 16, s // 16, model.feature_dim) and stride == 16
    prompts = {
        "points": jnp.asarray(rng.uniform(0, s, (2, 3, 2, 2)), jnp.float32),
        "point_labels": jnp.asarray([[[1, 0], [1, -1], [1, 1]]] * 2, jnp.int32),
    }
    logits, iou = model.decode_masks(embedding, prompts)
    assert logits.shape == (2, 3, s, s) and iou.shape == (2, 3)
    boxes = jnp.asarray([[[10, 20, 100, 120], [0, 0, 200, 250]]] * 2, jnp.float32)
    logits_b, iou_b = model.decode_masks(embedding, {"boxes": boxes})
    assert logits_b.shape == (2, 2, s, s)
    # Each image's prompts decode against that image: the second image alone gives the same.
    one = jax.tree.map(lambda x: x[1:], embedding)
    alone, _ = model.decode_masks(one, {"boxes": boxes[1:]})
    assert np.abs(np.asarray(alone[0] - logits_b[1])).max() < 1e-4

    # Train-like LoRA, then export with it folded in: the plain export computes the same.
    randomize_lora(model, seed=6)
    embedding = model.encode_pixels(images, content)
    models.export_merged(config, model, tmp_path / "merged", {"path": "adapted"})
    merged = models.build(_run_config(str(tmp_path / "merged"), lora_rank=None))
    assert not nnx.to_flat_state(nnx.state(merged, models.LORA))
    again = merged.encode_pixels(images, content)
    diff = np.abs(np.asarray(again["image_embed"] - embedding["image_embed"])).max()
    print(f"merged export vs adapted: image embedding {diff:.2e}")
    assert diff < 1e-4


def test_random_init_and_size_names():
    config = _run_config(model_type="hiera_test")
    model = models.build(config)
    assert model.config.model_type == "hiera_test"
    from resam_jax.models.sam2.build import model_type_of

    assert model_type_of("b+") == "hiera_b+" and model_type_of("t") == "hiera_t"
    with pytest.raises(models.ModelError, match="not a SAM 2 size"):
        model_type_of("vit_b")


def test_the_method_train_step_runs_on_sam2():
    """ReSAM's jitted train step, unchanged, on a SAM 2 with LoRA (64 px, random weights): only
    the LoRA trains and it moves."""
    from test_train_step import IMAGE_SIZE, make_batch, make_config, train_step_of

    from resam_jax.method.train_state import create_train_state, split_model

    config = sam2_config("hiera_test", image_size=IMAGE_SIZE, lora_rank=4, lora_start_layer=1)
    model = Sam2(config, rngs=nnx.Rngs(0), pixel_norm="unit")
    graphdef, lora, frozen = split_model(model)
    assert len(jax.tree.leaves(lora)) == 2 * 2 * (config.depth - 1)
    run_config = make_config()
    step = train_step_of(graphdef, run_config)
    state = create_train_state(jax.tree.map(jnp.copy, lora), model.feature_dim, run_config)
    before = jax.tree.map(np.array, state.lora)
    for seed in range(2):
        state, metrics = step(state, frozen, make_batch(seed))
        assert not bool(metrics["skipped"]) and np.isfinite(float(metrics["loss"]))
        assert int(metrics["valid_instances"]) > 0
    moved = [
        np.abs(np.asarray(a) - b).max()
        for a, b in zip(jax.tree.leaves(state.lora), jax.tree.leaves(before))
    ]
    assert max(moved) > 0
