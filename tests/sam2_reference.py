"""Meta's `sam2` 1.1.0 (the PyTorch reference) at any Sam2Config, with every tensor randomised.

Parameters that SAM 2 initialises to zero, one or a small constant (the position embeddings,
LayerNorm scales, no_mem_embed) get noise too, so a tensor mapped to the wrong place or in the
wrong layout cannot go unnoticed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("sam2")

from flax import nnx  # noqa: E402
from sam2.modeling.sam2_base import SAM2Base  # noqa: E402

from benchmarks.torch_step import perturb_, torch_sam2  # noqa: E402
from resam_jax.models.sam2 import Sam2, Sam2Config  # noqa: E402
from resam_jax.models.sam2.checkpoint import sam2_from_params  # noqa: E402
from resam_jax.models.sam2.params import torch_to_flax  # noqa: E402

YAML = {
    "hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}
YAML_2_0 = {k: v.replace("sam2.1/sam2.1_", "sam2/sam2_") for k, v in YAML.items()}


def released_model(model_type: str, version: str = "2.1") -> SAM2Base:
    """The whole SAM2Base (video modules included) of a release's yaml, as build_sam2 makes it."""
    from sam2.build_sam import build_sam2

    yaml = (YAML if version == "2.1" else YAML_2_0)[model_type]
    return build_sam2(yaml, ckpt_path=None, device="cpu", mode="eval")


def build_reference(config: Sam2Config, seed: int = 0) -> SAM2Base:
    """SAM2Base without the video modules, as the sam2.1 yaml files build it, randomised."""
    model = torch_sam2(config, seed)
    randomize_(model, seed)
    return model.eval()


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Perturb every tensor so that no parameter keeps a symmetric or constant value; the
    position embeddings (which the bicubic interpolation reads) at a larger scale."""
    perturb_(module, seed, position_scale=0.5, positions=("pos_embed", "no_mem_embed"), keep=())


def numpy_state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def jax_twin(reference: SAM2Base, config: Sam2Config) -> Sam2:
    """The Flax model carrying the reference's image-model weights."""
    params, _, unknown = torch_to_flax(numpy_state_dict(reference))
    assert not unknown, unknown
    return sam2_from_params(config, params)


def t(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x))


def nchw(x) -> torch.Tensor:
    return t(x).permute(0, 3, 1, 2).contiguous()


def nhwc(x: torch.Tensor) -> np.ndarray:
    return x.detach().permute(0, 2, 3, 1).numpy()


@torch.no_grad()
def reference_features(reference: SAM2Base, images: torch.Tensor) -> dict:
    """SAM2ImagePredictor.set_image's `_features` for a batch of normalised NCHW images, at
    any image size (the predictor itself hard-codes 1024)."""
    backbone_out = reference.forward_image(images)
    _, vision_feats, _, sizes = reference._prepare_backbone_features(backbone_out)
    vision_feats[-1] = vision_feats[-1] + reference.no_mem_embed
    b = images.shape[0]
    feats = [f.permute(1, 2, 0).reshape(b, -1, *s) for f, s in zip(vision_feats, sizes)]
    return {"image_embed": feats[-1], "high_res_feats": feats[:-1]}


def abstract_model(config: Sam2Config) -> Sam2:
    return nnx.eval_shape(lambda: Sam2(config, rngs=nnx.Rngs(0)))
