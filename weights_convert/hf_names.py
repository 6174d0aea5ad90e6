"""Transformers' SamModel names (the Hub's facebook/sam-vit-*) renamed to Meta's SAM names.

Both hold the same tensors in the same torch layouts, so a transformers checkpoint renamed
here goes through the one Meta -> Flax mapping (resam_jax.models.sam.params).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import numpy as np

# transformers' prompt encoder keeps a tied copy of the top-level positional embedding.
_TIED_POSITIONAL = "prompt_encoder.shared_embedding.positional_embedding"
_POSITIONAL = "shared_image_embedding.positional_embedding"

# (transformers module or tensor path regex, Meta's), matched on whole dotted components;
# names that are the same in both are listed too, so any other key is reported, not passed on.
_RENAMES: tuple[tuple[str, str], ...] = (
    (r"vision_encoder\.patch_embed\.projection", "image_encoder.patch_embed.proj"),
    (r"vision_encoder\.pos_embed", "image_encoder.pos_embed"),
    (r"vision_encoder\.layers\.(\d+)\.layer_norm([12])", r"image_encoder.blocks.\1.norm\2"),
    (
        r"vision_encoder\.layers\.(\d+)\.(attn\.(?:qkv|proj|rel_pos_h|rel_pos_w)|mlp\.lin[12])",
        r"image_encoder.blocks.\1.\2",
    ),
    (r"vision_encoder\.neck\.conv1", "image_encoder.neck.0"),
    (r"vision_encoder\.neck\.layer_norm1", "image_encoder.neck.1"),
    (r"vision_encoder\.neck\.conv2", "image_encoder.neck.2"),
    (r"vision_encoder\.neck\.layer_norm2", "image_encoder.neck.3"),
    (re.escape(_POSITIONAL), "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (re.escape(_TIED_POSITIONAL), "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"prompt_encoder\.mask_embed\.conv1", "prompt_encoder.mask_downscaling.0"),
    (r"prompt_encoder\.mask_embed\.layer_norm1", "prompt_encoder.mask_downscaling.1"),
    (r"prompt_encoder\.mask_embed\.conv2", "prompt_encoder.mask_downscaling.3"),
    (r"prompt_encoder\.mask_embed\.layer_norm2", "prompt_encoder.mask_downscaling.4"),
    (r"prompt_encoder\.mask_embed\.conv3", "prompt_encoder.mask_downscaling.6"),
    (r"prompt_encoder\.point_embed\.(\d+)", r"prompt_encoder.point_embeddings.\1"),
    (r"prompt_encoder\.(no_mask_embed|not_a_point_embed)", r"prompt_encoder.\1"),
    (r"mask_decoder\.(iou_token|mask_tokens)", r"mask_decoder.\1"),
    (
        r"mask_decoder\.transformer\.layers\.(\d+)\.layer_norm([1-4])",
        r"mask_decoder.transformer.layers.\1.norm\2",
    ),
    (
        r"mask_decoder\.transformer\.(layers\.\d+\.(?:self_attn|cross_attn_token_to_image"
        r"|cross_attn_image_to_token)|final_attn_token_to_image)\.(q_proj|k_proj|v_proj|out_proj)",
        r"mask_decoder.transformer.\1.\2",
    ),
    (
        r"mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])",
        r"mask_decoder.transformer.layers.\1.mlp.\2",
    ),
    (
        r"mask_decoder\.transformer\.layer_norm_final_attn",
        "mask_decoder.transformer.norm_final_attn",
    ),
    (r"mask_decoder\.upscale_conv1", "mask_decoder.output_upscaling.0"),
    (r"mask_decoder\.upscale_layer_norm", "mask_decoder.output_upscaling.1"),
    (r"mask_decoder\.upscale_conv2", "mask_decoder.output_upscaling.3"),
)

# transformers' SamFeedForward names its first and last Linear proj_in / proj_out and the
# hidden ones layers.0..n-1; Meta's MLP numbers all of them layers.0..n+1.
_FEED_FORWARD = re.compile(
    r"(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))"
    r"\.(proj_in|proj_out|layers\.(\d+))\.(weight|bias)"
)


def is_transformers_sam(keys: Collection[str]) -> bool:
    """Whether a state_dict's keys are transformers' SamModel's rather than Meta's."""
    return any(k.startswith(("vision_encoder.", "shared_image_embedding.")) for k in keys)


def _rename(key: str) -> str | None:
    for pattern, meta in _RENAMES:
        if m := re.match(rf"{pattern}(?=\.|$)", key):
            return m.expand(meta) + key[m.end() :]
    return None


def to_meta_names(
    state_dict: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Meta's state_dict for a transformers SamModel one, and the keys that are not SamModel's."""
    hidden_layers: dict[str, set[int]] = {}
    for key in state_dict:
        if (m := _FEED_FORWARD.fullmatch(key)) and m[3] is not None:
            hidden_layers.setdefault(m[1], set()).add(int(m[3]))

    renamed, unexpected = {}, []
    for key, value in state_dict.items():
        if key == _TIED_POSITIONAL and _POSITIONAL in state_dict:
            if not np.array_equal(value, state_dict[_POSITIONAL]):
                unexpected.append(f"{key} (differs from {_POSITIONAL}, the tensor it is tied to)")
            continue
        if m := _FEED_FORWARD.fullmatch(key):
            mlp, layer, hidden, leaf = m.groups()
            index = {"proj_in": 0, "proj_out": len(hidden_layers.get(mlp, ())) + 1}.get(layer)
            meta = f"{mlp}.layers.{index if hidden is None else int(hidden) + 1}.{leaf}"
        else:
            meta = _rename(key)
        if meta is None:
            unexpected.append(key)
        else:
            renamed[meta] = value
    return renamed, unexpected
