"""Meta's SAM 2 / 2.1 state_dict keys <-> the Flax model's parameter paths, both directions.

One table serves both: each entry pairs a torch module pattern with a Flax module pattern
({i} a number, {p} a dotted path); the tensor layout follows from the kind of layer
(Linear (1, 0); Conv2d (2, 3, 1, 0); ConvTranspose2d (2, 3, 0, 1)). Video-only keys (memory
attention, memory encoder, object pointers) are named by their own table: the image model
does not use them, and any key in neither table is an error.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping

import numpy as np
from flax import nnx

from resam_jax.models.sam2.config import RELEASED_TYPES, Sam2Config, sam2_config

# (torch module, Flax module, kind); first match wins, in either direction. "auto": a module
# named norm* is a LayerNorm, any other a Linear.
_MODULES: tuple[tuple[str, str, str], ...] = (
    ("image_encoder.trunk.patch_embed.proj", "image_encoder.trunk.patch_embed", "conv"),
    ("image_encoder.neck.convs.{i}.conv", "image_encoder.neck.convs.{i}", "conv"),
    ("sam_prompt_encoder.mask_downscaling.0", "prompt_encoder.mask_conv1", "conv"),
    ("sam_prompt_encoder.mask_downscaling.1", "prompt_encoder.mask_norm1", "norm"),
    ("sam_prompt_encoder.mask_downscaling.3", "prompt_encoder.mask_conv2", "conv"),
    ("sam_prompt_encoder.mask_downscaling.4", "prompt_encoder.mask_norm2", "norm"),
    ("sam_prompt_encoder.mask_downscaling.6", "prompt_encoder.mask_conv3", "conv"),
    ("sam_mask_decoder.output_upscaling.0", "mask_decoder.upscale_conv1", "conv_transpose"),
    ("sam_mask_decoder.output_upscaling.1", "mask_decoder.upscale_norm", "norm"),
    ("sam_mask_decoder.output_upscaling.3", "mask_decoder.upscale_conv2", "conv_transpose"),
    ("sam_mask_decoder.conv_s{i}", "mask_decoder.conv_s{i}", "conv"),
    ("image_encoder.trunk.blocks.{i}.{p}", "image_encoder.trunk.blocks.{i}.{p}", "auto"),
    ("sam_mask_decoder.{p}", "mask_decoder.{p}", "auto"),
)
# Tensors that are not a layer's weight/bias: (torch key, Flax path, kind); "row" is an
# nn.Embedding(1, C) whose one row the Flax model keeps as [C].
_TENSORS: tuple[tuple[str, str, str], ...] = (
    ("image_encoder.trunk.pos_embed", "image_encoder.trunk.pos_embed", "as_is"),
    ("image_encoder.trunk.pos_embed_window", "image_encoder.trunk.pos_embed_window", "as_is"),
    (
        "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "prompt_encoder.gaussian_matrix",
        "as_is",
    ),
    (
        "sam_prompt_encoder.point_embeddings.{i}.weight",
        "prompt_encoder.point_embeddings.{i}",
        "row",
    ),
    ("sam_prompt_encoder.not_a_point_embed.weight", "prompt_encoder.not_a_point_embed", "row"),
    ("sam_prompt_encoder.no_mask_embed.weight", "prompt_encoder.no_mask_embed", "row"),
    ("sam_mask_decoder.obj_score_token.weight", "mask_decoder.obj_score_token", "as_is"),
    ("sam_mask_decoder.iou_token.weight", "mask_decoder.iou_token", "as_is"),
    ("sam_mask_decoder.mask_tokens.weight", "mask_decoder.mask_tokens", "as_is"),
    ("no_mem_embed", "no_mem_embed", "as_is"),
)
# Keys of SAM2Base that only video tracking uses (2.1 adds no_obj_embed_spatial and
# obj_ptr_tpos_proj; HF copies name the fuser's gamma `weight`).
VIDEO_ONLY_KEYS: tuple[str, ...] = (
    r"memory_attention\.layers\.\d+\.(self_attn|cross_attn_image)\.(q|k|v|out)_proj\.(weight|bias)",
    r"memory_attention\.layers\.\d+\.(linear[12]|norm[123])\.(weight|bias)",
    r"memory_attention\.norm\.(weight|bias)",
    r"memory_encoder\.mask_downsampler\.encoder\.\d+\.(weight|bias)",
    r"memory_encoder\.(pix_feat_proj|out_proj)\.(weight|bias)",
    r"memory_encoder\.fuser\.layers\.\d+\.(dwconv|norm|pwconv1|pwconv2)\.(weight|bias)",
    r"memory_encoder\.fuser\.layers\.\d+\.(gamma|weight)",
    r"mask_downsample\.(weight|bias)",
    r"obj_ptr_proj\.(layers\.\d+\.)?(weight|bias)",
    r"obj_ptr_tpos_proj\.(weight|bias)",
    r"maskmem_tpos_enc|no_mem_pos_enc|no_obj_ptr|no_obj_embed_spatial",
)
_VIDEO_ONLY = re.compile("|".join(f"(?:{k})" for k in VIDEO_ONLY_KEYS))
# Present only in 2.1 checkpoints.
SAM2_1_KEYS = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")

_WEIGHT_LAYOUT = {
    "linear": (1, 0),  # [out, in] -> [in, out]
    "conv": (2, 3, 1, 0),  # [out, in, kh, kw] -> [kh, kw, in, out]
    "conv_transpose": (2, 3, 0, 1),  # [in, out, kh, kw] -> [kh, kw, in, out]
}


class CheckpointMismatchError(ValueError):
    """A state_dict that does not fit the SAM 2 model it is being loaded into."""


@functools.cache
def _regex(pattern: str) -> re.Pattern:
    escaped = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>.+)")
    return re.compile(escaped)


def _fill(template: str, match: re.Match) -> str:
    return template.format(**match.groupdict())


def _translate(name: str, table, source: int) -> tuple[str, str] | None:
    """`name` through the first entry of `table` whose side `source` (0 torch, 1 Flax) matches:
    (the other side's name, kind)."""
    for entry in table:
        if m := _regex(entry[source]).fullmatch(name):
            return _fill(entry[1 - source], m), entry[2]
    return None


def is_video_only(key: str) -> bool:
    return _VIDEO_ONLY.fullmatch(key) is not None


def _path(dotted: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def _dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def _locate(key: str) -> tuple[tuple, str] | None:
    """torch key -> (Flax path, layout kind), or None when the key is not the image model's."""
    if found := _translate(key, _TENSORS, 0):
        return _path(found[0]), found[1]
    module, _, leaf = key.rpartition(".")
    if leaf not in ("weight", "bias") or not (found := _translate(module, _MODULES, 0)):
        return None
    flax_module, kind = found
    if kind == "auto":
        kind = "norm" if re.fullmatch(r"norm\w*", module.rpartition(".")[2]) else "linear"
    if leaf == "bias":
        return _path(f"{flax_module}.bias"), "as_is"
    return _path(f"{flax_module}.{'scale' if kind == 'norm' else 'kernel'}"), kind


def torch_key(path: tuple) -> str:
    """The torch key that `torch_to_flax` maps to the Flax `path` (checked both ways)."""
    dotted = _dotted(path)
    found = _translate(dotted, _TENSORS, 1)
    if found is None:
        module, _, leaf = dotted.rpartition(".")
        renamed = _translate(module, _MODULES, 1)
        leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
        found = (f"{renamed[0]}.{leaf}", "") if renamed else None
    if found is None or (located := _locate(found[0])) is None or located[0] != path:
        raise CheckpointMismatchError(f"no SAM 2 state_dict key maps to {dotted}")
    return found[0]


def _to_flax_layout(kind: str, value: np.ndarray) -> np.ndarray:
    if kind == "row":
        return value[0]
    if kind in _WEIGHT_LAYOUT:
        return np.transpose(value, _WEIGHT_LAYOUT[kind])
    return value


def _to_torch_layout(kind: str, value: np.ndarray) -> np.ndarray:
    if kind == "row":
        return value[None]
    if kind in _WEIGHT_LAYOUT:
        return np.transpose(value, np.argsort(_WEIGHT_LAYOUT[kind]))
    return value


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
) -> tuple[dict[tuple, np.ndarray], list[str], list[str]]:
    """(Flax path -> array for every image-model tensor, the video-only keys, the keys that are
    neither)."""
    params, video_only, unknown = {}, [], []
    for key, value in state_dict.items():
        located = _locate(key)
        if located is not None:
            params[located[0]] = _to_flax_layout(located[1], np.asarray(value))
        elif is_video_only(key):
            video_only.append(key)
        else:
            unknown.append(key)
    return params, video_only, unknown


def flax_to_torch(params: Mapping[tuple, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of `torch_to_flax`: Meta's image-model keys, arrays in torch layout."""
    state_dict = {}
    for path, value in params.items():
        key = torch_key(path)
        state_dict[key] = np.ascontiguousarray(_to_torch_layout(_locate(key)[1], np.asarray(value)))
    return state_dict


@functools.lru_cache(maxsize=8)
def param_shapes(config: Sam2Config) -> dict[tuple, tuple[int, ...]]:
    """Path -> shape of every variable of a Sam2 with `config`, traced without allocation.
    The cached dict is shared: do not modify it."""
    from resam_jax.models.sam2.model import Sam2  # local: the converter imports this first

    abstract = nnx.eval_shape(lambda: Sam2(config, rngs=nnx.Rngs(0)))
    return {path: tuple(v.shape) for path, v in nnx.to_flat_state(nnx.state(abstract))}


def check_params(
    params: Mapping[tuple, np.ndarray], config: Sam2Config, source: str, unknown: Iterable[str] = ()
) -> None:
    """Raise CheckpointMismatchError listing every missing, unexpected and mis-shaped tensor
    (torch key names); `unknown` are source keys that `torch_to_flax` could not place."""
    expected = param_shapes(config)
    name = lambda p: torch_key(p) if p in expected else _dotted(p)  # noqa: E731
    missing = sorted(name(p) for p in expected.keys() - params.keys())
    extra = sorted([*unknown, *(_dotted(p) for p in params.keys() - expected.keys())])
    shapes = sorted(
        f"{name(p)}: checkpoint {tuple(params[p].shape)}, {config.model_type} expects {expected[p]}"
        for p in expected.keys() & params.keys()
        if tuple(params[p].shape) != expected[p]
    )
    if missing or extra or shapes:
        lines = [f"{source} does not fit SAM 2 {config.model_type}:"]
        for title, items in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
            if items:
                more = " ..." if len(items) > 20 else ""
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:20]) + more)
        raise CheckpointMismatchError("\n".join(lines))


def detect_model_type(params: Mapping[tuple, np.ndarray]) -> str | None:
    """The released Hiera size whose trunk shapes (width, depth) these are, or None."""
    patch = params.get(("image_encoder", "trunk", "patch_embed", "kernel"))
    if patch is None:
        return None
    blocks = [p[3] for p in params if p[:3] == ("image_encoder", "trunk", "blocks")]
    depth = 1 + max(blocks, default=-1)
    for model_type in RELEASED_TYPES:
        config = sam2_config(model_type)
        if patch.shape[-1] == config.embed_dim and depth == config.depth:
            return model_type
    return None
