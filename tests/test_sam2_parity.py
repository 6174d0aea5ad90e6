"""Module-by-module parity of the Flax SAM 2 against Meta's `sam2` 1.1.0, on the small
`hiera_test` configuration (every block kind: windowed, padded, q-pool, global) with every
tensor randomised; the weights pass through the converter's mapping, so these tests also pin
every layout transform, epsilon and activation.

Measured on the project's CPU (max abs): trunk levels <= 2e-6, image embedding 1.7e-6. Bounds
are rtol/atol 1e-4 as for SAM (2e-4 on the decoder's outputs), 1e-6 on the bicubic resize.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

import torch.nn.functional as F  # noqa: E402
from sam2_reference import (  # noqa: E402
    build_reference,
    jax_twin,
    nchw,
    nhwc,
    reference_features,
    t,
)

from resam_jax.models.sam2 import RELEASED_TYPES, box_as_points, sam2_config  # noqa: E402
from resam_jax.models.sam2.hiera import window_partition, window_unpartition  # noqa: E402
from resam_jax.models.sam2.layers import bicubic_matrix  # noqa: E402

CONFIG = sam2_config("hiera_test")
TOL = dict(rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def pair():
    reference = build_reference(CONFIG, seed=3)
    return reference, jax_twin(reference, CONFIG)


def close(actual, expected, **tol):
    torch.testing.assert_close(t(np.asarray(actual)), expected.detach(), **(tol or TOL))


def normal(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("size", [(7, 64), (7, 256), (14, 256), (14, 64), (8, 5)])
def test_bicubic_matrix_is_torch_interpolate(size):
    """torch's bicubic (A = -0.75, unclamped source, border-clamped taps) as a matrix; the
    Keys kernel of jax.image.resize differs by ~1e-2 here."""
    source, target = size
    x = normal(1, 3, source, source)
    expected = F.interpolate(t(x), size=(target, target), mode="bicubic")
    weights = bicubic_matrix(source, target)
    actual = np.einsum("yi,ncij,xj->ncyx", weights, x, weights)
    close(actual, expected, rtol=1e-6, atol=1e-6)


def test_position_embedding(pair):
    reference, model = pair
    grid = CONFIG.image_size // 4
    expected = reference.image_encoder.trunk._get_pos_embed((grid, grid))[0]
    close(model.image_encoder.trunk.position_embedding(grid, grid), expected, rtol=0, atol=1e-5)


def test_patch_embed(pair):
    reference, model = pair
    images = normal(2, CONFIG.image_size, CONFIG.image_size, 3, seed=1)
    expected = reference.image_encoder.trunk.patch_embed(nchw(images))  # NHWC out
    close(model.image_encoder.trunk.patch_embed(jnp.asarray(images)), expected)


def test_window_partition_pads_like_reference():
    from sam2.modeling.backbones.utils import window_partition as ref_partition

    tokens = normal(2, 16, 16, 8)
    windows, padded = window_partition(jnp.asarray(tokens), 14)
    ref_windows, ref_padded = ref_partition(t(tokens), 14)
    assert padded == ref_padded == (28, 28)
    close(windows, ref_windows, rtol=0, atol=0)
    np.testing.assert_array_equal(window_unpartition(windows, 14, padded, (16, 16)), tokens)


@pytest.mark.parametrize("budget", [1, 3 * 2 * 9 * 9 * 4, 1 << 30], ids=["one", "three", "all"])
def test_grouped_window_attention_is_sdpa(monkeypatch, budget):
    """Windows a group at a time (one window when even one exceeds the budget, three of the six,
    all of them), q-pooled queries (fewer than keys): torch's scaled_dot_product_attention, and
    its gradient."""
    import torch.nn.functional as F

    from resam_jax.models.sam2 import layers

    monkeypatch.setattr(layers, "WINDOW_GROUP_BYTES", budget)
    q, k, v = (normal(6, n, 2, 8, seed=30 + i) for i, n in enumerate((4, 9, 9)))
    heads = lambda x: t(x).transpose(1, 2).requires_grad_()  # noqa: E731
    tq, tk, tv = heads(q), heads(k), heads(v)
    expected = F.scaled_dot_product_attention(tq, tk, tv).transpose(1, 2)
    (expected**3).sum().backward()

    def loss(q, k, v):
        out = layers.grouped_window_attention(q, k, v)
        return jnp.sum(out**3), out

    grads, out = jax.grad(loss, argnums=(0, 1, 2), has_aux=True)(*map(jnp.asarray, (q, k, v)))
    close(out, expected.detach(), rtol=1e-5, atol=1e-6)
    for grad, reference in zip(grads, (tq, tk, tv), strict=True):
        close(grad, reference.grad.transpose(1, 2), rtol=1e-4, atol=1e-5)


def _block_input(index: int) -> np.ndarray:
    """Tokens at block `index`'s input grid and width."""
    spec = CONFIG.blocks()[index]
    stage = sum(index > end for end in CONFIG.stage_ends)
    grid = CONFIG.image_size // 4 // 2**stage
    return normal(2, grid, grid, spec.dim, seed=10 + index)


BLOCK_KINDS = {
    0: "windowed",
    1: "q-pool",
    3: "q-pool-small-window",
    4: "global",
    5: "windowed-padded",
    6: "q-pool-padded",
    7: "windowed-padded-stage4",
}


@pytest.mark.parametrize("index", BLOCK_KINDS, ids=BLOCK_KINDS.values())
def test_block(pair, index):
    reference, model = pair
    ref_block, block = (
        reference.image_encoder.trunk.blocks[index],
        model.image_encoder.trunk.blocks[index],
    )
    assert (ref_block.window_size, ref_block.q_stride is not None) == (
        block.window_size,
        block.q_pool,
    )
    tokens = _block_input(index)
    with torch.no_grad():
        expected = ref_block(t(tokens))
    close(block(jnp.asarray(tokens)), expected)


def test_trunk_levels(pair):
    reference, model = pair
    images = normal(2, CONFIG.image_size, CONFIG.image_size, 3, seed=2)
    with torch.no_grad():
        expected = reference.image_encoder.trunk(nchw(images))
    actual = model.image_encoder.trunk(jnp.asarray(images))
    assert len(actual) == len(expected) == 4
    for level, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == nhwc(e).shape, level
        close(a, t(nhwc(e)))


def test_neck(pair):
    """Reversed convs (convs.0 is stage 4's), top-down only into level 2, level 3 dropped."""
    reference, model = pair
    stages = [
        normal(2, CONFIG.image_size // 4 // 2**i, CONFIG.image_size // 4 // 2**i, dim, seed=20 + i)
        for i, dim in enumerate(reversed(CONFIG.channel_list))
    ]
    with torch.no_grad():
        expected, _ = reference.image_encoder.neck([nchw(s) for s in stages])
    actual = model.image_encoder.neck([jnp.asarray(s) for s in stages])
    assert len(actual) == 3
    for a, e in zip(actual, expected[:3]):
        close(a, t(nhwc(e)))


def test_encode_is_the_predictors_features(pair):
    """image_embed = L2 + no_mem_embed, high_res_feats = conv_s0(L0), conv_s1(L1)."""
    reference, model = pair
    images = normal(2, CONFIG.image_size, CONFIG.image_size, 3, seed=4)
    expected = reference_features(reference, nchw(images))
    actual = model.encode(jnp.asarray(images))
    close(actual["image_embed"], t(nhwc(expected["image_embed"])))
    for a, e in zip(actual["high_res_feats"], expected["high_res_feats"], strict=True):
        close(a, t(nhwc(e)))


def prompts(n=3, p=8, seed=0):
    rng = np.random.default_rng(seed)
    size = CONFIG.image_size
    points = rng.uniform(0, size, size=(n, p, 2)).astype(np.float32)
    labels = rng.integers(-1, 4, size=(n, p)).astype(np.int32)
    labels[:, 0] = np.arange(n) % 2  # a click in every set
    boxes = np.sort(rng.uniform(0, size, size=(n, 2, 2)), axis=1).reshape(n, 4).astype(np.float32)
    masks = rng.normal(size=(n, CONFIG.low_res_size, CONFIG.low_res_size)).astype(np.float32)
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
    assert set(np.unique(labels)) == {-1, 0, 1, 2, 3}
    with torch.no_grad():
        sparse, dense = reference.sam_prompt_encoder(
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
    assert actual_sparse.shape == sparse.shape
    close(actual_sparse, sparse)
    close(actual_dense, t(nhwc(dense)))


def test_box_prompt_is_two_corner_points_and_a_pad(pair):
    """SAM2ImagePredictor._predict: box corners (labels 2, 3) before the clicks, boxes=None."""
    reference, model = pair
    points, labels, boxes, _ = prompts(p=2)
    corners = t(boxes).reshape(-1, 2, 2)
    with torch.no_grad():
        sparse, _ = reference.sam_prompt_encoder(
            points=(
                torch.cat([corners, t(points)], 1),
                torch.cat([t([[2, 3]]).repeat(len(boxes), 1), t(labels)], 1),
            ),
            boxes=None,
            masks=None,
        )
    actual, _ = model.embed_prompts(jnp.asarray(points), jnp.asarray(labels), jnp.asarray(boxes))
    assert actual.shape[1] == 2 + 2 + 1
    close(actual, sparse)
    box_only, _ = model.embed_prompts(boxes=jnp.asarray(boxes))
    assert box_only.shape[1] == 3
    np.testing.assert_array_equal(box_as_points(jnp.asarray(boxes))[1], [[2, 3]] * len(boxes))


def test_dense_positional_encoding(pair):
    reference, model = pair
    expected = reference.sam_prompt_encoder.get_dense_pe()[0].permute(1, 2, 0)
    close(model.prompt_encoder.dense_pe(), expected)


def test_two_way_transformer(pair):
    reference, model = pair
    e, c = CONFIG.embed_size, CONFIG.d_model
    image, pe, tokens = (
        normal(3, e, e, c, seed=5),
        normal(3, e, e, c, seed=6),
        normal(3, 9, c, seed=7),
    )
    with torch.no_grad():
        queries, keys = reference.sam_mask_decoder.transformer(nchw(image), nchw(pe), t(tokens))
    actual_q, actual_k = model.mask_decoder.transformer(
        jnp.asarray(image.reshape(3, e * e, c)),
        jnp.asarray(pe.reshape(3, e * e, c)),
        jnp.asarray(tokens),
    )
    close(actual_q, queries)
    close(actual_k, keys)


def _decoder_inputs(n: int, images: int, seed: int):
    e, c = CONFIG.embed_size, CONFIG.d_model
    embed = normal(images, e, e, c, seed=seed)
    high_res = (
        normal(images, 4 * e, 4 * e, c // 8, seed=seed + 1),
        normal(images, 2 * e, 2 * e, c // 4, seed=seed + 2),
    )
    sparse = normal(n, 5, c, seed=seed + 3)
    dense = 0.3 * normal(n, e, e, c, seed=seed + 4)
    return embed, high_res, sparse, dense


@pytest.mark.parametrize(
    "multimask,dynamic,repeat_image",
    list(itertools.product([False, True], repeat=3)),
    ids=lambda v: str(v),
)
def test_mask_decoder(pair, multimask, dynamic, repeat_image):
    """Masks, IoU (sigmoid), output token and object-score logits; the dynamic single-mask
    fallback only where asked for (the reference: eval mode vs train mode). The stability
    threshold is set between the prompt sets' stabilities, so both branches are taken."""
    reference, model = pair
    n = 4
    embed, high_res, sparse, dense = _decoder_inputs(n, 1 if repeat_image else n, seed=30)
    decoder = reference.sam_mask_decoder
    inputs = dict(
        image_embeddings=nchw(embed),
        image_pe=reference.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=t(sparse),
        dense_prompt_embeddings=nchw(dense),
        repeat_image=repeat_image,
        high_res_features=[nchw(h) for h in high_res],
    )
    with torch.no_grad():
        all_masks, all_iou, _, _ = decoder.predict_masks(**inputs)
    stability = np.sort(decoder._get_stability_scores(all_masks[:, 0]).numpy())
    thresh = float(stability[1:3].mean())
    decoder.train(not dynamic)
    decoder.dynamic_multimask_stability_thresh = model.mask_decoder.stability_thresh = thresh
    try:
        with torch.no_grad():
            masks, iou, tokens, obj = decoder(multimask_output=multimask, **inputs)
        actual = model.mask_decoder(
            jnp.asarray(embed),
            model.prompt_encoder.dense_pe(),
            jnp.asarray(sparse),
            jnp.asarray(dense),
            tuple(jnp.asarray(h) for h in high_res),
            multimask_output=multimask,
            repeat_image=repeat_image,
            dynamic_multimask=dynamic,
        )
    finally:
        decoder.eval()
        decoder.dynamic_multimask_stability_thresh = CONFIG.stability_thresh
        model.mask_decoder.stability_thresh = CONFIG.stability_thresh
    for a, e in zip(actual, (masks, iou, tokens, obj), strict=True):
        assert a.shape == tuple(e.shape)
        close(a, e, rtol=1e-4, atol=2e-4)
    if dynamic and not multimask:  # the unstable half got their best multimask output
        unstable = (decoder._get_stability_scores(all_masks[:, 0]) < thresh).nonzero()[:, 0]
        assert len(unstable) == n // 2
        best = 1 + all_iou[unstable, 1:].argmax(-1)
        torch.testing.assert_close(masks[unstable, 0], all_masks[unstable, best])


def test_end_to_end_small(pair):
    """Images -> encode -> box + click prompts -> low-res logits, IoU, object scores, as
    SAM2ImagePredictor runs one image with several prompt sets (repeat_image)."""
    reference, model = pair
    image = normal(1, CONFIG.image_size, CONFIG.image_size, 3, seed=8)
    points, labels, boxes, _ = prompts(n=3, p=2, seed=9)
    labels = np.clip(labels, 0, 1)
    features = reference_features(reference, nchw(image))
    corners = t(boxes).reshape(-1, 2, 2)
    coords = torch.cat([corners, t(points)], 1)
    coord_labels = torch.cat([t([[2, 3]]).repeat(len(boxes), 1), t(labels)], 1)
    with torch.no_grad():
        sparse, dense = reference.sam_prompt_encoder(
            points=(coords, coord_labels), boxes=None, masks=None
        )
        expected = reference.sam_mask_decoder(
            image_embeddings=features["image_embed"],
            image_pe=reference.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            repeat_image=True,
            high_res_features=features["high_res_feats"],
        )
    ours = jax.jit(
        lambda image, points, labels, boxes: model.decode(
            model.encode(image),
            *model.embed_prompts(points, labels, boxes),
            multimask_output=True,
        )
    )(jnp.asarray(image), jnp.asarray(points), jnp.asarray(labels), jnp.asarray(boxes))
    for a, e in zip(ours, expected, strict=True):
        close(a, e, rtol=1e-4, atol=2e-4)


def _stage_grid(config, index: int) -> int:
    """Side of block `index`'s input grid at the config's image size."""
    return config.image_size // 4 // 2 ** sum(index > end for end in config.stage_ends)


@pytest.mark.parametrize(
    "model_type", [*RELEASED_TYPES[:3], pytest.param("hiera_l", marks=pytest.mark.slow)]
)
def test_block_kinds_of_every_size(model_type):
    """One block of each kind (width, heads, window, q-pool, grid) of a released size, at its
    grid for 1024 inputs (so with the size's own window padding), against sam2's block."""
    from flax import nnx
    from sam2.modeling.backbones.hieradet import MultiScaleBlock as TorchBlock
    from sam2_reference import randomize_

    from resam_jax.models.sam2.hiera import MultiScaleBlock
    from resam_jax.models.sam2.params import torch_to_flax

    config = sam2_config(model_type)
    kinds = {}
    for index, spec in enumerate(config.blocks()):
        kinds.setdefault((spec, _stage_grid(config, index)), index)
    assert len(kinds) >= 8  # windowed and global per stage, three q-pool blocks
    for (spec, grid), index in kinds.items():
        torch.manual_seed(index)
        reference = TorchBlock(
            spec.dim,
            spec.dim_out,
            spec.num_heads,
            q_stride=(2, 2) if spec.q_pool else None,
            window_size=spec.window_size,
        )
        randomize_(reference, seed=index)
        prefix = f"image_encoder.trunk.blocks.{index}."
        params, _, unknown = torch_to_flax(
            {prefix + k: v.numpy() for k, v in reference.state_dict().items()}
        )
        assert not unknown
        block = nnx.eval_shape(
            lambda spec=spec: MultiScaleBlock(spec, config.mlp_ratio, config, rngs=nnx.Rngs(0))
        )
        graphdef, state = nnx.split(block)
        trunk_block = ("image_encoder", "trunk", "blocks", index)
        flat = [
            (p, v.replace(jnp.asarray(params[(*trunk_block, *p)])))
            for p, v in nnx.to_flat_state(state)
        ]
        block = nnx.merge(graphdef, nnx.from_flat_state(flat))
        tokens = normal(1, grid, grid, spec.dim, seed=index)
        with torch.no_grad():
            expected = reference(t(tokens))
        close(block(jnp.asarray(tokens)), expected, rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize(
    "options",
    [dict(attention="chunked", attention_chunk_size=96, remat="blocks"),
     dict(attention="dot_product")],
    ids=["chunked-remat", "dot_product"],
)  # fmt: skip
def test_memory_options_compute_the_same_function(pair, options, monkeypatch):
    """Chunked global attention with rematerialised blocks, and jax.nn.dot_product_attention,
    give the same encoding and the same gradients; bfloat16 stays within its precision."""
    import dataclasses

    from flax import nnx

    from resam_jax.models.sam2 import hiera, layers
    from resam_jax.models.sam2.checkpoint import sam2_from_params

    calls = {"dot_product": 0, "chunked": 0, "grouped": 0}

    def count(module, name, key):
        function = getattr(module, name)

        def counted(*args, **kwargs):
            calls[key] += 1
            return function(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)

    count(jax.nn, "dot_product_attention", "dot_product")
    count(layers, "chunked_attention", "chunked")
    count(hiera, "grouped_window_attention", "grouped")
    _, model = pair
    params = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
    options = dataclasses.replace(CONFIG, **options)
    variant = sam2_from_params(options, params)
    images = jnp.asarray(normal(1, CONFIG.image_size, CONFIG.image_size, 3, seed=12))

    @nnx.jit
    def encode_and_grad(m):
        def loss(m):
            features = m.encode(images)
            embed, (level0, _) = features["image_embed"], features["high_res_feats"]
            return jnp.sum(embed**2) + jnp.sum(level0**2), embed

        return nnx.grad(loss, has_aux=True)(m)

    expected, embed = encode_and_grad(model)
    actual, variant_embed = encode_and_grad(variant)
    np.testing.assert_allclose(variant_embed, embed, atol=1e-5)
    # Each block's attention runs through its option's function, and no other: "dot_product"
    # in every block; "chunked" in the global blocks (their grid is above the chunk size) and
    # grouped windows in the windowed ones. An option ignored, or given to the wrong blocks, fails.
    global_blocks = len(CONFIG.global_att_blocks)
    expected_calls = {
        "dot_product": {"dot_product": CONFIG.depth, "chunked": 0, "grouped": 0},
        "chunked": {
            "dot_product": 0,
            "chunked": global_blocks,
            "grouped": CONFIG.depth - global_blocks,
        },
    }[options.attention]
    assert calls == expected_calls
    global_block = ("image_encoder", "trunk", "blocks", CONFIG.global_att_blocks[0])
    for (path, e), (_, a) in zip(nnx.to_flat_state(expected), nnx.to_flat_state(actual)):
        if path[:4] == global_block or path[-2:] == ("patch_embed", "kernel"):
            scale = np.abs(e.get_value()).max()
            np.testing.assert_allclose(
                a.get_value(), e.get_value(), atol=1e-5 * scale, err_msg=str(path)
            )

    half = sam2_from_params(dataclasses.replace(options, dtype="bfloat16"), params)
    low = nnx.jit(lambda m: m.encode(images)["image_embed"])(half)
    # bfloat16 through the trunk; the neck's top-down sum is float32, as in torch autocast
    assert half.image_encoder.trunk.patch_embed(images).dtype == jnp.bfloat16
    assert np.abs(np.asarray(low, np.float32) - embed).max() <= 0.05 * np.abs(embed).max()


CHECKPOINT = ("remat2", "checkpoint")  # jax.checkpoint's primitive, by jax version


def all_eqns(jaxpr):
    """The equations of a jaxpr and of the jaxprs nested in them (pjit, ...), not entering a
    checkpoint's."""
    from jax.extend.core import jaxprs_in_params

    for eqn in jaxpr.eqns:
        yield eqn
        if eqn.primitive.name not in CHECKPOINT:
            for sub in jaxprs_in_params(eqn.params):
                yield from all_eqns(sub)


@pytest.mark.parametrize("remat", ["blocks", "dots_with_no_batch_dims_saveable"])
def test_remat_puts_the_lora_blocks_under_checkpoint_with_its_policy(pair, remat):
    """Sam2Config.remat: each block from the first LoRA block on runs under jax.checkpoint with
    the option's policy (blocks: none, save nothing), the frozen blocks before them plainly (they
    carry no gradient); "none" checkpoints nothing. A remat option ignored, or applied to every
    block, fails here."""
    import dataclasses

    from flax import nnx

    from resam_jax.models.sam2.checkpoint import sam2_from_params

    _, model = pair
    params = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
    images = jnp.asarray(normal(1, CONFIG.image_size, CONFIG.image_size, 3, seed=13))
    start = 5

    def checkpoints(option):
        config = dataclasses.replace(CONFIG, lora_rank=4, lora_start_layer=start, remat=option)
        variant = sam2_from_params(config, params)
        graphdef, state = nnx.split(variant)
        jaxpr = jax.make_jaxpr(lambda s: nnx.merge(graphdef, s).encode(images))(state)
        return [e.params["policy"] for e in all_eqns(jaxpr.jaxpr) if e.primitive.name in CHECKPOINT]

    assert checkpoints("none") == []
    policies = checkpoints(remat)
    assert len(policies) == len(CONFIG.blocks()) - start, policies
    expected = None if remat == "blocks" else getattr(jax.checkpoint_policies, remat)
    assert all(policy is expected for policy in policies), policies
