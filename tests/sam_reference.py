"""Meta's segment-anything (the PyTorch reference) built at any of our SamConfig sizes.

Every parameter and buffer is randomised, including those SAM initialises to
zero or one (relative positions, absolute positions, LayerNorm scales), so a
tensor mapped to the wrong place or with the wrong layout cannot go unnoticed.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from flax import nnx
from segment_anything.modeling import Sam as TorchSam

from benchmarks.torch_step import torch_sam
from resam_jax.models.sam import Sam, SamConfig
from resam_jax.models.sam.checkpoint import sam_from_params
from resam_jax.models.sam.params import torch_to_flax


def build_reference(config: SamConfig, seed: int = 0) -> TorchSam:
    """segment-anything's Sam at `config`'s sizes (benchmarks.torch_step.torch_sam builds it the
    way sam_model_registry does), every tensor then randomised."""
    sam = torch_sam(config, seed)
    randomize_(sam, seed)
    return sam.eval()


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Perturb every tensor so that no parameter keeps a symmetric (0 or 1) value."""
    gen = torch.Generator().manual_seed(seed + 1)
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if name.endswith(("pixel_mean", "pixel_std")):
            continue
        noise = torch.randn(tensor.shape, generator=gen)
        if "rel_pos" in name or "pos_embed" in name:
            tensor.copy_(0.1 * noise)
        elif tensor.ndim == 1 and name.endswith("weight"):  # norm scales
            tensor.copy_(1.0 + 0.2 * noise)
        elif tensor.ndim == 1:  # biases
            tensor.copy_(0.1 * noise)
        else:
            tensor.add_(0.01 * noise)


def converted_reference(config: SamConfig, seed: int, root) -> tuple[TorchSam, object, object]:
    """A random Meta-layout SAM saved as ROOT/reference.pth and converted by the CLI into
    ROOT/ckpt, as a user converts Meta's weights: (reference, .pth path, checkpoint dir)."""
    from weights_convert.convert_sam import main as convert_main

    reference = build_reference(config, seed=seed)
    pth, ckpt = root / "reference.pth", root / "ckpt"
    torch.save(reference.state_dict(), pth)
    assert convert_main(["--checkpoint", str(pth), "--output", str(ckpt)]) == 0
    return reference, pth, ckpt


def numpy_state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def jax_twin(reference: TorchSam, config: SamConfig) -> Sam:
    """The Flax model carrying the reference's weights."""
    params, unexpected = torch_to_flax(numpy_state_dict(reference))
    assert not unexpected, unexpected
    return sam_from_params(config, params)


def t(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x))


def nchw(x) -> torch.Tensor:
    return t(x).permute(0, 3, 1, 2).contiguous()


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).numpy()


def demo_sam(
    lora_b_scale: float = 0.0, lora_a_scale: float = 0.3, seed: int = 11, unit_pixels: bool = False
) -> Sam:
    """The packaged pretrained tiny SAM (128 px) with LoRA (rank 4) on q and v of every block.

    The demo SAM was trained on SAM-normalised pixels; `unit_pixels` folds that normalisation
    into its patch embedding (kernel * 255 / std, bias - kernel . mean / std) so that [0, 1]
    pixels, what the public ReSAM code feeds SAM, give the masks it was trained to give
    (inside the image content; the zero padding now means pixel value 0 instead of the mean).

    LoRA A and B are normal draws times their scales; lora_b_scale=0 gives B = 0, i.e. exactly
    the checkpoint's SAM, as load_sam(path, lora_rank=4, lora_start_layer=0) does. Built
    abstractly and filled: ~20x faster than initialising the model eagerly on a busy CPU.
    """
    import dataclasses

    import jax.numpy as jnp

    from resam_jax.config import DEMO_SAM_CHECKPOINT
    from resam_jax.models.sam.checkpoint import load_sam_params

    config, params = load_sam_params(DEMO_SAM_CHECKPOINT)
    if unit_pixels:
        from resam_jax.models.sam.sam import PIXEL_MEAN, PIXEL_STD

        path = ("image_encoder", "patch_embed")
        kernel = params[(*path, "kernel")]  # [kh, kw, 3, C]
        std, mean = np.asarray(PIXEL_STD, np.float64), np.asarray(PIXEL_MEAN, np.float64)
        params[(*path, "bias")] = params[(*path, "bias")] - np.einsum(
            "hwco,c->o", kernel, mean / std
        )
        params[(*path, "kernel")] = kernel * (255.0 / std)[:, None]
    config = dataclasses.replace(config, lora_rank=4, lora_start_layer=0)
    pixel_norm = "unit" if unit_pixels else "sam"
    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0), pixel_norm=pixel_norm))
    )
    rng = np.random.default_rng(seed)
    flat = []
    for path, variable in nnx.to_flat_state(state):
        if path in params:
            value = params[path]
        else:
            assert isinstance(variable, nnx.LoRAParam), path
            scale = lora_a_scale if path[-1] == "lora_a" else lora_b_scale
            value = scale * rng.normal(size=variable.get_value().shape)
        flat.append((path, variable.replace(jnp.asarray(value, jnp.float32))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def torch_twin(model: Sam) -> TorchSam:
    """The reference SAM carrying the Flax model's frozen weights (the inverse of jax_twin),
    through the exporter's mapping (`flax_to_torch`); the round trip is checked."""
    from resam_jax.models.sam.params import flax_to_torch

    frozen = nnx.state(model, nnx.Not(nnx.LoRAParam))
    flat = {path: np.array(v.get_value()) for path, v in nnx.to_flat_state(frozen)}
    reference = build_reference(model.config)
    state_dict = {k: torch.from_numpy(v) for k, v in flax_to_torch(flat).items()}
    reference.load_state_dict(state_dict)  # strict: every key of the reference, no other
    params, unexpected = torch_to_flax(numpy_state_dict(reference))
    assert not unexpected, unexpected
    assert params.keys() == flat.keys(), params.keys() ^ flat.keys()
    for path, value in params.items():
        np.testing.assert_array_equal(value, flat[path], err_msg=str(path))
    return reference


class LoRAqkv(torch.nn.Module):
    """The public `_LoRA_qkv`: qkv(x) with B_q A_q x added to q and B_v A_v x added to v."""

    def __init__(self, qkv: torch.nn.Linear, rank: int):
        super().__init__()
        self.qkv, dim = qkv, qkv.in_features
        self.linear_a_q = torch.nn.Linear(dim, rank, bias=False)
        self.linear_b_q = torch.nn.Linear(rank, dim, bias=False)
        self.linear_a_v = torch.nn.Linear(dim, rank, bias=False)
        self.linear_b_v = torch.nn.Linear(rank, dim, bias=False)

    def forward(self, x):
        qkv = self.qkv(x)
        dim = self.qkv.in_features
        qkv[:, :, :, :dim] += self.linear_b_q(self.linear_a_q(x))
        qkv[:, :, :, -dim:] += self.linear_b_v(self.linear_a_v(x))
        return qkv


def attach_lora(reference, model) -> dict[tuple, torch.nn.Parameter]:
    """Wraps every block's qkv in LoRAqkv carrying the Flax model's LoRA; returns the LoRA
    parameters by the Flax path (torch weight = Flax kernel transposed)."""
    for p in reference.parameters():
        p.requires_grad_(False)
    params = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.LoRAParam)):
        _, _, block, _, lora, part = path  # image_encoder.blocks.i.attn.lora_{q,v}.lora_{a,b}
        attn = reference.image_encoder.blocks[block].attn
        if not isinstance(attn.qkv, LoRAqkv):
            attn.qkv = LoRAqkv(attn.qkv, model.config.lora_rank)
        linear = getattr(attn.qkv, f"linear_{part[-1]}_{lora[-1]}")
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.array(variable.get_value()).T))
        linear.weight.requires_grad_(True)
        params[path] = linear.weight
    return params


def public_forward(sam, images, prompt):
    """utils/model.py Model.forward for one image: encode, single-mask decode, bilinear to the
    input frame; a tensor prompt is boxes, a tuple is (points, labels)."""
    embedding = sam.image_encoder(images)
    if isinstance(prompt, torch.Tensor):
        sparse, dense = sam.prompt_encoder(points=None, boxes=prompt, masks=None)
    else:
        sparse, dense = sam.prompt_encoder(points=prompt, boxes=None, masks=None)
    low_res, iou = sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )
    masks = F.interpolate(low_res, images.shape[-2:], mode="bilinear", align_corners=False)
    return embedding, masks[:, 0], iou


def assert_same_prediction(expected, actual):
    """SamPredictor.predict outputs (masks, IoU, low-res logits) of the reference and ours agree
    within the tiny-config parity bounds."""
    masks, iou, low_res = expected
    actual_masks, actual_iou, actual_low_res = actual
    assert actual_masks.shape == masks.shape and actual_masks.dtype == masks.dtype
    np.testing.assert_allclose(actual_low_res, low_res, atol=1e-3)
    np.testing.assert_allclose(actual_iou, iou, atol=1e-4)
    assert (actual_masks != masks).mean() <= 1e-3
