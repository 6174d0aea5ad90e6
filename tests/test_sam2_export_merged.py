"""A ReSAM run's SAM 2 export back in PyTorch: Meta-layout weights (a random Hiera-t, every tensor
randomised, video-only keys included) converted for 128 px inputs, adapted with a non-zero LoRA on
q and v, exported with the LoRA folded in (resam_jax.models.export_merged, what the run writes to
export/sam_merged), written as a .pt by weights_convert.export_sam2, and loaded by `sam2`'s own
build_sam2 (strict: every key of SAM2Base, no other). That model predicts what ours predicts with
its LoRA unmerged: image embedding <= 1e-4, low-res logits <= 2e-5, IoU <= 1e-6 (max abs
difference; the bounds of the other SAM 2 parity tests, tests/tolerances.py)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from sam2_reference import YAML, nchw, numpy_state_dict, randomize_, reference_features  # noqa: E402
from tolerances import SAM2_EMBEDDING_ATOL, SAM2_IOU_ATOL, SAM2_LOW_RES_LOGITS_ATOL  # noqa: E402

from resam_jax import models  # noqa: E402
from resam_jax.models.sam2 import normalize_pixels, sam2_config  # noqa: E402
from resam_jax.models.sam2.checkpoint import save_sam2_params  # noqa: E402
from resam_jax.models.sam2.params import torch_to_flax  # noqa: E402
from weights_convert.export_sam2 import main as export_main  # noqa: E402

SIZE = 128  # hiera_t's layout (windows padded at stages 3 and 4) at a small input
OVERRIDES = [f"++model.image_size={SIZE}"]
LORA_START = 6  # the second half of hiera_t's 12 blocks


def build_sam2_at_size(ckpt_path=None):
    """build_sam2 of the sam2.1 hiera_t yaml for SIZE inputs: eval mode, strict loading."""
    from sam2.build_sam import build_sam2

    return build_sam2(
        YAML["hiera_t"], ckpt_path=ckpt_path, device="cpu", hydra_overrides_extra=OVERRIDES
    )


def run_config(checkpoint: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            seed=0,
            data=dict(image_size=SIZE),
            model=dict(
                family="sam2", model_type="t", checkpoint=checkpoint, lora_rank=4,
                lora_start_layer=LORA_START, lora_targets=("q", "v"), dtype="float32",
                pixel_norm="sam", attention="chunked", attention_chunk_size=128, remat="blocks",
            ),
        )
    )  # fmt: skip


PROMPTS = {  # (points [n, P, 2], labels [n, P]) in the model's frame, multimask
    "click": (np.array([[[40.0, 52.0]]]), np.array([[1]]), True),
    "two clicks": (np.array([[[40.0, 52.0], [100.0, 20.0]]]), np.array([[1, 0]]), False),
    "box": (np.array([[[20.0, 30.0], [90.0, 110.0]]]), np.array([[2, 3]]), False),
    "box + click, 2 sets": (
        np.array([[[20.0, 30.0], [90.0, 110.0], [50.0, 60.0]], [[5, 5], [60, 70], [30, 30]]]),
        np.array([[2, 3, 1], [2, 3, 0]]),
        False,
    ),
}


@torch.no_grad()
def torch_predict(reference, features, points, labels, multimask):
    """SAM2ImagePredictor._predict's decode (boxes already as corner points labelled 2, 3)."""
    sparse, dense = reference.sam_prompt_encoder(
        points=(torch.from_numpy(points).float(), torch.from_numpy(labels).int()),
        boxes=None,
        masks=None,
    )
    low_res, iou, _, _ = reference.sam_mask_decoder(
        image_embeddings=features["image_embed"],
        image_pe=reference.sam_prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
        repeat_image=points.shape[0] > 1,
        high_res_features=features["high_res_feats"],
    )
    return low_res.numpy(), iou.numpy()


def test_merged_export_loads_strictly_in_sam2_and_predicts_as_the_adapted_model(tmp_path, capsys):
    meta = build_sam2_at_size()
    randomize_(meta, seed=21)
    state_dict = numpy_state_dict(meta)
    params, video_keys, unknown = torch_to_flax(state_dict)
    assert not unknown and video_keys  # maskmem_tpos_enc, memory attention, ...
    video_only = {key: state_dict[key] for key in video_keys}
    source = {"path": "random sam2.1 hiera_t", "release": "2.1"}
    config = sam2_config("hiera_t", image_size=SIZE)
    save_sam2_params(tmp_path / "converted", params, config, source, video_only)

    # The run's model: the converted weights with a trained-like LoRA (B non-zero).
    model = models.build(run_config(str(tmp_path / "converted")))
    rng = np.random.default_rng(22)
    lora = nnx.to_flat_state(nnx.state(model, models.LORA))
    assert len(lora) == 2 * 2 * (config.depth - LORA_START)
    for _, v in lora:
        v.set_value(jnp.asarray(0.2 * rng.standard_normal(v.get_value().shape), jnp.float32))

    # What loop._export writes, then the .pt.
    run_source = {"path": str(tmp_path / "converted"), "resam_step": 2, "pixel_norm": "sam"}
    models.export_merged(run_config(""), model, tmp_path / "sam_merged", run_source)
    pt = tmp_path / "sam2.1_hiera_t_adapted.pt"
    assert export_main(["--checkpoint", str(tmp_path / "sam_merged"), "--output", str(pt)]) == 0
    assert 'build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml"' in capsys.readouterr().out
    exported = torch.load(pt, map_location="cpu", weights_only=True)["model"]
    assert exported.keys() == meta.state_dict().keys()
    for key in video_only:  # untouched
        assert torch.equal(exported[key], meta.state_dict()[key]), key
    adapted = build_sam2_at_size(str(pt))  # strict: raises on a missing or unexpected key

    # The same image and prompts through both.
    pixels = rng.uniform(0, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    normalised = np.asarray(normalize_pixels(jnp.asarray(pixels)))
    with torch.no_grad():
        theirs = reference_features(adapted, nchw(normalised))
    ours = nnx.jit(lambda model, x: model.encode(x))(model, jnp.asarray(normalised))
    embed_diff = np.abs(
        np.asarray(ours["image_embed"][0]) - theirs["image_embed"][0].permute(1, 2, 0).numpy()
    ).max()
    print(f"image embedding {embed_diff:.2e}")
    assert embed_diff <= SAM2_EMBEDDING_ATOL
    # ... and the LoRA mattered: the unadapted weights are far from it.
    with torch.no_grad():
        plain = reference_features(meta, nchw(normalised))["image_embed"]
    assert (plain - theirs["image_embed"]).abs().max().item() > 100 * SAM2_EMBEDDING_ATOL

    @nnx.jit(static_argnums=4)
    def decode(model, features, points, labels, multimask):
        sparse, dense = model.embed_prompts(points, labels)
        # build_sam2's eval mode: the dynamic single-mask fallback.
        low_res, iou, _, _ = model.decode(
            features, sparse, dense, multimask_output=multimask, dynamic_multimask=True
        )
        return low_res, iou

    for name, (points, labels, multimask) in PROMPTS.items():
        expected_low_res, expected_iou = torch_predict(adapted, theirs, points, labels, multimask)
        low_res, iou = decode(
            model, ours, jnp.asarray(points, jnp.float32), jnp.asarray(labels), multimask
        )
        logit_diff = np.abs(np.asarray(low_res) - expected_low_res).max()
        iou_diff = np.abs(np.asarray(iou) - expected_iou).max()
        print(f"{name}: low-res logits {logit_diff:.2e}, IoU {iou_diff:.2e}")
        assert logit_diff <= SAM2_LOW_RES_LOGITS_ATOL and iou_diff <= SAM2_IOU_ATOL, name
