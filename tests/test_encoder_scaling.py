"""The encoder's memory options compute the same function: query-chunked and dot-product
attention against our reference attention and Meta's, and rematerialised blocks, in values and
in LoRA gradients; XLA's compiled memory analysis shows what each option saves."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from sam_reference import attach_lora, build_reference, jax_twin, nchw, nhwc, t

from resam_jax.models.sam import Sam, sam_config
from resam_jax.models.sam.image_encoder import chunk_rows

# A 40-query chunk of the tiny model's 16 x 16 global grid is 2 rows: 8 chunks.
TINY = sam_config("tiny", lora_start_layer=0, attention_chunk_size=40)
GLOBAL = TINY.encoder_global_attn_indexes[0]
IMPLEMENTATIONS = ("reference", "chunked", "dot_product")
TOL = dict(rtol=1e-4, atol=1e-4)  # tests/test_model_parity.py


def close(actual, expected, **tol):
    torch.testing.assert_close(t(np.asarray(actual)), expected.detach(), **(tol or TOL))


@pytest.fixture(scope="module")
def reference():
    return build_reference(TINY, seed=3)


def twin(reference, **overrides) -> Sam:
    """The Flax model with the reference's weights and random non-zero LoRA (seeded)."""
    model = jax_twin(reference, dataclasses.replace(TINY, **overrides))
    rng = np.random.default_rng(7)
    lora = nnx.state(model, nnx.LoRAParam)
    for _, variable in nnx.to_flat_state(lora):
        variable.set_value(jnp.asarray(0.2 * rng.normal(size=variable.get_value().shape)))
    nnx.update(model, lora)
    return model


def test_chunks_are_whole_rows_of_at_most_chunk_size_queries():
    assert chunk_rows(16, 16, 40) == 2
    assert chunk_rows(64, 64, 1024) == 16
    assert chunk_rows(64, 64, 100) == 1  # never less than a row
    assert chunk_rows(14, 14, 1024) == 14  # a 14 x 14 window is one chunk
    assert chunk_rows(6, 6, 20) == 3


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_global_attention_matches_ours_and_segment_anything(reference, implementation):
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, TINY.embed_size, TINY.embed_size, TINY.encoder_embed_dim))
    tokens = tokens.astype(np.float32)
    ours = twin(reference).image_encoder.blocks[GLOBAL].attn(jnp.asarray(tokens))
    model = twin(reference, attention=implementation)
    attn = model.image_encoder.blocks[GLOBAL].attn
    assert attn.implementation == implementation
    actual = attn(jnp.asarray(tokens))
    np.testing.assert_allclose(actual, ours, rtol=1e-5, atol=1e-5)
    # Meta's attention with LoRA off: the twin without LoRA's update (B = 0 in the reference).
    plain = jax_twin(reference, dataclasses.replace(TINY, attention=implementation))
    with torch.no_grad():
        expected = reference.image_encoder.blocks[GLOBAL].attn(t(tokens))
    close(plain.image_encoder.blocks[GLOBAL].attn(jnp.asarray(tokens)), expected)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS[1:])
def test_image_encoder_matches_segment_anything(reference, implementation):
    model = jax_twin(reference, dataclasses.replace(TINY, attention=implementation))
    images = np.random.default_rng(2).normal(size=(1, TINY.image_size, TINY.image_size, 3))
    images = images.astype(np.float32)
    with torch.no_grad():
        expected = reference.image_encoder(nchw(images))
    close(model.encode(jnp.asarray(images)), t(nhwc(expected)), rtol=1e-4, atol=2e-4)


def lora_gradients(model: Sam, images: np.ndarray, cotangent: np.ndarray) -> dict:
    """d sum(encoder(images) * cotangent) / d LoRA, by Flax path."""
    graphdef, lora, frozen = nnx.split(model, nnx.LoRAParam, ...)

    def objective(lora):
        return jnp.sum(nnx.merge(graphdef, lora, frozen).image_encoder(images) * cotangent)

    grads = jax.jit(jax.grad(objective))(lora)
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(grads)}


@pytest.fixture(scope="module")
def gradient_case(reference):
    """(images, cotangent, LoRA gradients of the reference formulation without remat)."""
    rng = np.random.default_rng(5)
    images = rng.normal(size=(1, TINY.image_size, TINY.image_size, 3)).astype(np.float32)
    cotangent = rng.normal(size=(1, TINY.embed_size, TINY.embed_size, TINY.prompt_embed_dim))
    cotangent = cotangent.astype(np.float32)
    return images, cotangent, lora_gradients(twin(reference), images, cotangent)


def test_reference_lora_gradients_match_segment_anything(reference, gradient_case):
    """Torch autograd through segment-anything wrapped in the public LoRA, same LoRA values."""
    images, cotangent, grads = gradient_case
    torch_reference = build_reference(TINY, seed=3)
    torch_params = attach_lora(torch_reference, twin(reference))
    (torch_reference.image_encoder(nchw(images)) * nchw(cotangent)).sum().backward()
    assert grads.keys() == torch_params.keys()
    for path, grad in grads.items():
        torch_grad = torch_params[path].grad.numpy().T
        scale = np.abs(torch_grad).max()
        np.testing.assert_allclose(grad, torch_grad, atol=1e-4 * scale, err_msg=str(path))


@pytest.mark.parametrize(
    "implementation,remat",
    [
        ("chunked", "none"),
        ("dot_product", "none"),
        ("reference", "blocks"),
        ("chunked", "blocks"),
        ("chunked", "dots_with_no_batch_dims_saveable"),
    ],
)
def test_lora_gradients_do_not_depend_on_attention_or_remat(
    reference, gradient_case, implementation, remat
):
    """Gradients through every attention implementation and remat option equal those of the
    reference formulation without remat, to 2e-6 of the largest entry of each tensor."""
    images, cotangent, baseline = gradient_case
    grads = lora_gradients(
        twin(reference, attention=implementation, remat=remat), images, cotangent
    )
    assert grads.keys() == baseline.keys()
    for path, grad in grads.items():
        scale = np.abs(baseline[path]).max()
        np.testing.assert_allclose(grad, baseline[path], atol=2e-6 * scale, err_msg=str(path))


# Large enough that activations, not weights, fill the temporaries; compiles in seconds.
MEMORY = sam_config(
    "tiny",
    image_size=512,
    encoder_embed_dim=64,
    encoder_depth=6,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(2, 5),
    window_size=8,
    lora_start_layer=1,
    attention_chunk_size=128,
)


def compiled_temp_bytes(config, gradients: bool) -> int:
    """Temporary bytes XLA plans for one encoder forward (or its LoRA gradient) at batch 2.
    (XLA:CPU fuses the reference forward's scores into the value product, so without
    gradients the chunks save nothing on CPU.)"""
    model = nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0)))
    graphdef, lora, frozen = nnx.split(model, nnx.LoRAParam, ...)
    images = jax.ShapeDtypeStruct((2, config.image_size, config.image_size, 3), jnp.float32)

    def objective(lora, frozen, images):
        return jnp.sum(nnx.merge(graphdef, lora, frozen).image_encoder(images))

    fn = jax.grad(objective) if gradients else objective
    compiled = jax.jit(fn).lower(lora, frozen, images).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_remat_and_chunked_attention_shrink_the_gradients_temporaries():
    """Remat of the five LoRA blocks saves their residuals; chunked attention saves at least
    the score matrices of a global block (1024 x 1024 per head and image in this config,
    against 128 x 1024 per chunk). Measured: 154, 138, 70, 52 MiB."""
    temp = {
        (attention, remat): compiled_temp_bytes(
            dataclasses.replace(MEMORY, attention=attention, remat=remat), gradients=True
        )
        for attention in ("reference", "chunked")
        for remat in ("none", "blocks")
    }
    scores = 2 * MEMORY.encoder_num_heads * (MEMORY.embed_size**2) ** 2 * 4  # 32 MiB
    assert temp["reference", "blocks"] < temp["reference", "none"] - scores / 4, temp
    assert temp["chunked", "none"] < temp["reference", "none"] - 2 * scores, temp
    assert temp["chunked", "blocks"] < 0.8 * temp["chunked", "none"], temp


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="attention"):
        sam_config("tiny", attention="flash")
    with pytest.raises(ValueError, match="remat"):
        sam_config("tiny", remat="everything")
