"""Layer-by-layer parity of the Flax SAM against Meta's segment-anything, on a tiny config.

The reference and the port share randomised weights through the converter's
mapping, so these tests also pin every layout transform (Linear, Conv2d,
ConvTranspose2d) and every epsilon / activation choice.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from sam_reference import build_reference, jax_twin, nchw, nhwc, t

from resam_jax.models.sam import sam_config, upsample_logits
from resam_jax.models.sam.image_encoder import window_partition, window_unpartition
from resam_jax.models.sam.sam import postprocess_masks

TINY = sam_config("tiny")
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def pair():
    reference = build_reference(TINY, seed=3)
    return reference, jax_twin(reference, TINY)


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(0)
    return rng.normal(size=(2, TINY.embed_size, TINY.embed_size, TINY.encoder_embed_dim)).astype(
        np.float32
    )


def close(actual, expected, **tol):
    torch.testing.assert_close(t(np.asarray(actual)), expected.detach(), **(tol or TOL))


def test_patch_embedding(pair):
    reference, model = pair
    images = (
        np.random.default_rng(1)
        .normal(size=(2, TINY.image_size, TINY.image_size, 3))
        .astype(np.float32)
    )
    expected = reference.image_encoder.patch_embed(nchw(images))  # patch_embed returns NHWC
    close(model.image_encoder.patch_embed(jnp.asarray(images)), expected)


@pytest.mark.parametrize("block_index", [0, 1], ids=["windowed", "global"])
def test_encoder_block(pair, tokens, block_index):
    reference, model = pair
    ref_block, block = (
        reference.image_encoder.blocks[block_index],
        model.image_encoder.blocks[block_index],
    )
    assert (ref_block.window_size == 0) == (block_index in TINY.encoder_global_attn_indexes)
    with torch.no_grad():
        expected_attn = ref_block.attn(t(tokens[:, :6, :6]) if ref_block.window_size else t(tokens))
        expected = ref_block(t(tokens))
    attn_input = tokens[:, :6, :6] if block.window_size else tokens
    close(block.attn(jnp.asarray(attn_input)), expected_attn)
    close(block(jnp.asarray(tokens)), expected)


def test_window_partition_roundtrip_pads_like_reference(tokens):
    from segment_anything.modeling.image_encoder import window_partition as ref_partition

    windows, padded = window_partition(jnp.asarray(tokens), 6)
    ref_windows, ref_padded = ref_partition(t(tokens), 6)
    assert padded == ref_padded == (18, 18)
    close(windows, ref_windows, rtol=0, atol=0)
    np.testing.assert_array_equal(window_unpartition(windows, 6, padded, tokens.shape[1:3]), tokens)


def test_neck(pair, tokens):
    reference, model = pair
    encoder = model.image_encoder
    with torch.no_grad():
        expected = reference.image_encoder.neck(nchw(tokens))
    actual = encoder.neck_norm2(
        encoder.neck_conv2(encoder.neck_norm1(encoder.neck_conv1(jnp.asarray(tokens))))
    )
    close(actual, t(nhwc(expected)))


def test_image_encoder(pair):
    reference, model = pair
    images = (
        np.random.default_rng(2)
        .normal(size=(1, TINY.image_size, TINY.image_size, 3))
        .astype(np.float32)
    )
    with torch.no_grad():
        expected = reference.image_encoder(nchw(images))
    close(model.encode(jnp.asarray(images)), t(nhwc(expected)), rtol=1e-4, atol=2e-4)


def prompts(n=3, p=4, seed=0):
    rng = np.random.default_rng(seed)
    points = rng.uniform(0, TINY.image_size, size=(n, p, 2)).astype(np.float32)
    labels = rng.integers(-1, 2, size=(n, p)).astype(np.int32)
    xy = np.sort(rng.uniform(0, TINY.image_size, size=(n, 2, 2)), axis=1).astype(np.float32)
    boxes = xy.reshape(n, 4)
    masks = rng.normal(size=(n, TINY.low_res_size, TINY.low_res_size)).astype(np.float32)
    return points, labels, boxes, masks


@pytest.mark.parametrize(
    "use_points,use_boxes,use_masks",
    [
        (True, False, False),
        (False, True, False),
        (True, True, False),
        (True, False, True),
        (False, False, True),
    ],
    ids=["points", "boxes", "points+boxes", "points+masks", "masks"],
)
def test_prompt_encoder(pair, use_points, use_boxes, use_masks):
    reference, model = pair
    points, labels, boxes, masks = prompts()
    with torch.no_grad():
        sparse, dense = reference.prompt_encoder(
            points=(t(points), t(labels)) if use_points else None,
            boxes=t(boxes) if use_boxes else None,
            masks=t(masks[:, None]) if use_masks else None,
        )
    actual_sparse, actual_dense = model.prompt_encoder(
        jnp.asarray(points) if use_points else None,
        jnp.asarray(labels) if use_points else None,
        jnp.asarray(boxes) if use_boxes else None,
        jnp.asarray(masks) if use_masks else None,
    )
    close(actual_sparse, sparse)
    close(actual_dense, t(nhwc(dense)))


def test_dense_positional_encoding(pair):
    reference, model = pair
    close(
        model.prompt_encoder.dense_pe(), reference.prompt_encoder.get_dense_pe()[0].permute(1, 2, 0)
    )


def test_two_way_transformer(pair):
    reference, model = pair
    rng = np.random.default_rng(4)
    e, c = TINY.embed_size, TINY.prompt_embed_dim
    image = rng.normal(size=(3, e, e, c)).astype(np.float32)
    pe = rng.normal(size=(3, e, e, c)).astype(np.float32)
    tokens = rng.normal(size=(3, 7, c)).astype(np.float32)
    with torch.no_grad():
        queries, keys = reference.mask_decoder.transformer(nchw(image), nchw(pe), t(tokens))
    actual_q, actual_k = model.mask_decoder.transformer(
        jnp.asarray(image.reshape(3, e * e, c)),
        jnp.asarray(pe.reshape(3, e * e, c)),
        jnp.asarray(tokens),
    )
    close(actual_q, queries)
    close(actual_k, keys)


@pytest.mark.parametrize("multimask", [False, True])
def test_mask_decoder(pair, multimask):
    reference, model = pair
    rng = np.random.default_rng(5)
    e, c = TINY.embed_size, TINY.prompt_embed_dim
    embedding = rng.normal(size=(1, e, e, c)).astype(np.float32)
    sparse = rng.normal(size=(3, 6, c)).astype(np.float32)
    dense = rng.normal(size=(3, e, e, c)).astype(np.float32)
    with torch.no_grad():
        masks, iou = reference.mask_decoder(
            image_embeddings=nchw(embedding),
            image_pe=reference.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=t(sparse),
            dense_prompt_embeddings=nchw(dense),
            multimask_output=multimask,
        )
    actual_masks, actual_iou = model.mask_decoder(
        jnp.repeat(jnp.asarray(embedding), 3, axis=0),
        model.prompt_encoder.dense_pe(),
        jnp.asarray(sparse),
        jnp.asarray(dense),
        multimask,
    )
    close(actual_masks, masks, rtol=1e-4, atol=5e-4)
    close(actual_iou, iou)


def test_decode_batches_images_and_instances(pair):
    """Sam.decode over [B, N] prompts equals the reference decoding each image's prompts."""
    reference, model = pair
    rng = np.random.default_rng(6)
    e, c = TINY.embed_size, TINY.prompt_embed_dim
    embeddings = rng.normal(size=(2, e, e, c)).astype(np.float32)
    batch = [prompts(seed=s) for s in (7, 8)]
    points = np.stack([b[0] for b in batch])
    labels = np.stack([b[1] for b in batch])
    logits, iou = model.decode(
        jnp.asarray(embeddings), jnp.asarray(points), jnp.asarray(labels), multimask_output=True
    )
    for i in range(2):
        with torch.no_grad():
            sparse, dense = reference.prompt_encoder(
                points=(t(points[i]), t(labels[i])), boxes=None, masks=None
            )
            masks, ref_iou = reference.mask_decoder(
                image_embeddings=nchw(embeddings[i : i + 1]),
                image_pe=reference.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
        close(logits[i], masks, rtol=1e-4, atol=5e-4)
        close(iou[i], ref_iou)


@pytest.mark.parametrize("original_size", [(200, 150), (700, 512)], ids=["down", "up"])
def test_postprocess_masks_matches_torch_interpolate(pair, original_size):
    reference, _ = pair
    logits = (
        np.random.default_rng(9)
        .normal(size=(2, 3, TINY.low_res_size, TINY.low_res_size))
        .astype(np.float32)
    )
    input_size = (256, int(256 * original_size[1] / original_size[0] + 0.5))  # ResizeLongestSide
    expected = reference.postprocess_masks(t(logits), input_size, original_size)
    actual = postprocess_masks(jnp.asarray(logits), TINY.image_size, input_size, original_size)
    close(actual, expected, rtol=1e-5, atol=1e-5)


def test_upsample_logits_matches_torch_interpolate():
    logits = np.random.default_rng(10).normal(size=(2, 3, 64, 64)).astype(np.float32)
    expected = torch.nn.functional.interpolate(
        t(logits), (256, 256), mode="bilinear", align_corners=False
    )
    close(upsample_logits(jnp.asarray(logits), 256), expected, rtol=1e-5, atol=1e-5)


def test_lora_adds_to_q_and_v_only_like_the_public_lora_qkv():
    """Non-zero LoRA on the packaged tiny SAM against the reference wrapped in the public
    `_LoRA_qkv` (sam_reference.LoRAqkv): the fused qkv projection changes in its q and v thirds
    and not in k, and the whole encoder matches the wrapped reference."""
    from sam_reference import attach_lora, demo_sam, torch_twin

    model = demo_sam(lora_b_scale=0.2, lora_a_scale=0.2)
    reference = torch_twin(model)
    attach_lora(reference, model)
    config = model.config
    dim = config.encoder_embed_dim
    rng = np.random.default_rng(4)
    grid = config.embed_size
    x = rng.normal(size=(1, grid, grid, dim)).astype(np.float32)
    for block, ref_block in zip(
        model.image_encoder.blocks, reference.image_encoder.blocks, strict=True
    ):
        attn = block.attn
        plain = np.asarray(attn.qkv(jnp.asarray(x)))
        with torch.no_grad():
            wrapped = ref_block.attn.qkv(t(x)).numpy()
            unwrapped = ref_block.attn.qkv.qkv(t(x)).numpy()  # the frozen projection alone
        adapted = plain + np.concatenate(
            [np.asarray(attn.lora_q(jnp.asarray(x))), np.zeros_like(x), np.asarray(attn.lora_v(jnp.asarray(x)))],
            axis=-1,
        )  # fmt: skip
        np.testing.assert_allclose(adapted, wrapped, rtol=1e-4, atol=1e-5)
        changed = np.abs(wrapped - unwrapped).reshape(-1, 3, dim).max(axis=(0, 2))
        assert changed[0] > 1e-3 and changed[2] > 1e-3 and changed[1] == 0.0, changed  # q, k, v
    images = rng.normal(size=(1, config.image_size, config.image_size, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference.image_encoder(nchw(images))
    close(
        model.image_encoder(jnp.asarray(images)), expected.permute(0, 2, 3, 1), rtol=1e-3, atol=1e-3
    )
