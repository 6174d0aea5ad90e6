"""Mapping of Meta's SAM PyTorch state_dict onto the Flax model's parameters, and back.

A table of regexes renames torch modules to Flax paths; the layout transform
follows from the kind of layer (Linear (1, 0); Conv2d (2, 3, 1, 0);
ConvTranspose2d (2, 3, 0, 1)). `tests/test_model_parity.py` pins all three.
`flax_to_torch` inverts the same table (each Flax path's torch key is the
candidate that the forward mapping sends to it), so the two directions cannot drift apart.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

import numpy as np
from flax import nnx

from resam_jax.models.sam.architecture import MODEL_TYPES, SamConfig, sam_config

# (torch module prefix regex, Flax module path, layer kind). Order matters: first match wins.
_RENAMES: tuple[tuple[str, str, str], ...] = (
    (r"image_encoder\.patch_embed\.proj", "image_encoder.patch_embed", "conv"),
    (r"image_encoder\.neck\.0", "image_encoder.neck_conv1", "conv"),
    (r"image_encoder\.neck\.1", "image_encoder.neck_norm1", "norm"),
    (r"image_encoder\.neck\.2", "image_encoder.neck_conv2", "conv"),
    (r"image_encoder\.neck\.3", "image_encoder.neck_norm2", "norm"),
    (r"prompt_encoder\.mask_downscaling\.0", "prompt_encoder.mask_conv1", "conv"),
    (r"prompt_encoder\.mask_downscaling\.1", "prompt_encoder.mask_norm1", "norm"),
    (r"prompt_encoder\.mask_downscaling\.3", "prompt_encoder.mask_conv2", "conv"),
    (r"prompt_encoder\.mask_downscaling\.4", "prompt_encoder.mask_norm2", "norm"),
    (r"prompt_encoder\.mask_downscaling\.6", "prompt_encoder.mask_conv3", "conv"),
    (r"mask_decoder\.output_upscaling\.0", "mask_decoder.upscale_conv1", "conv_transpose"),
    (r"mask_decoder\.output_upscaling\.1", "mask_decoder.upscale_norm", "norm"),
    (r"mask_decoder\.output_upscaling\.3", "mask_decoder.upscale_conv2", "conv_transpose"),
    (r"(.*\.norm\w*)", r"\1", "norm"),
    (r"(.*(?:qkv|proj|lin\d|layers\.\d+))", r"\1", "linear"),
)

# Tensors that are not a layer's weight/bias: torch key -> (Flax path, layer kind);
# "embedding_row" is an nn.Embedding(1, C) whose one row the Flax model keeps as [C].
_TENSORS: dict[str, tuple[str, str]] = {
    "image_encoder.pos_embed": ("image_encoder.pos_embed", "as_is"),
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (
        "prompt_encoder.pe_layer.gaussian_matrix",
        "as_is",
    ),
    "prompt_encoder.not_a_point_embed.weight": (
        "prompt_encoder.not_a_point_embed",
        "embedding_row",
    ),
    "prompt_encoder.no_mask_embed.weight": ("prompt_encoder.no_mask_embed", "embedding_row"),
    "mask_decoder.iou_token.weight": ("mask_decoder.iou_token", "as_is"),
    "mask_decoder.mask_tokens.weight": ("mask_decoder.mask_tokens", "as_is"),
}
# SAM keeps one nn.Embedding(1, C) per point type; the Flax model stacks them.
_POINT_EMBEDDING = re.compile(r"prompt_encoder\.point_embeddings\.(\d)\.weight")
_POINT_EMBEDDINGS_PATH = ("prompt_encoder", "point_embeddings")
_NUM_POINT_EMBEDDINGS = 4
_REL_POS = re.compile(r"(image_encoder\.blocks\.\d+\.attn)\.(rel_pos_[hw])")

_WEIGHT_LAYOUT = {
    "linear": (1, 0),  # [out, in] -> [in, out]
    "conv": (2, 3, 1, 0),  # [out, in, kh, kw] -> [kh, kw, in, out]
    "conv_transpose": (2, 3, 0, 1),  # [in, out, kh, kw] -> [kh, kw, in, out]
}


class CheckpointMismatchError(ValueError):
    """A state_dict that does not fit the SAM model it is being loaded into."""


def _path(dotted: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def _rename(module: str) -> tuple[str, str] | None:
    """torch module path -> (Flax module path, layer kind), by the first matching rule."""
    for pattern, target, kind in _RENAMES:
        if re.fullmatch(pattern, module):
            return re.sub(pattern, target, module), kind
    return None


def _locate(key: str) -> tuple[tuple, str] | None:
    """One torch key -> (Flax path, layout kind of the tensor), or None when it is not SAM's."""
    if key in _TENSORS:
        target, kind = _TENSORS[key]
        return _path(target), kind
    if m := _REL_POS.fullmatch(key):
        return _path(f"{m[1]}.{m[2]}"), "as_is"
    module, _, leaf = key.rpartition(".")
    if leaf not in ("weight", "bias"):
        return None
    renamed = _rename(module)
    if renamed is None:
        return None
    flax_module, kind = renamed
    if leaf == "bias":
        return _path(f"{flax_module}.bias"), "as_is"
    if kind == "norm":
        return _path(f"{flax_module}.scale"), "as_is"
    return _path(f"{flax_module}.kernel"), kind


def _to_flax_layout(kind: str, value: np.ndarray) -> np.ndarray:
    if kind == "embedding_row":
        return value[0]
    if kind in _WEIGHT_LAYOUT:
        return np.transpose(value, _WEIGHT_LAYOUT[kind])
    return value


def _to_torch_layout(kind: str, value: np.ndarray) -> np.ndarray:
    if kind == "embedding_row":
        return value[None]
    if kind in _WEIGHT_LAYOUT:
        return np.transpose(value, np.argsort(_WEIGHT_LAYOUT[kind]))
    return value


def _map_key(key: str, value: np.ndarray) -> tuple[tuple, np.ndarray] | None:
    """One torch tensor -> (Flax path, array), or None when the key is not SAM's."""
    located = _locate(key)
    if located is None:
        return None
    path, kind = located
    return path, _to_flax_layout(kind, value)


def _torch_key_candidates(path: tuple) -> list[str]:
    """Torch keys that may map to the Flax `path`: a `_TENSORS` key, a renamed module (its
    pattern, unescaped, is the literal torch name), or the module's own name (the generic
    rules keep names). `_torch_key` keeps the one the forward mapping sends to `path`."""
    dotted = _torch_name(path)
    module, _, leaf = dotted.rpartition(".")
    renamed = [re.sub(r"\\(.)", r"\1", p) for p, target, _ in _RENAMES if target == module]
    torch_leaf = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
    return [key for key, (target, _) in _TENSORS.items() if target == dotted] + [
        f"{m}.{torch_leaf}" for m in [*renamed, module]
    ]


def _torch_key(path: tuple) -> tuple[str, str]:
    """The torch key that `torch_to_flax` maps to the Flax `path`, and its layout kind."""
    for key in _torch_key_candidates(path):
        located = _locate(key)
        if located is not None and located[0] == path:
            return key, located[1]
    raise CheckpointMismatchError(f"no SAM state_dict key maps to {_torch_name(path)}")


def flax_to_torch(params: Mapping[tuple, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of `torch_to_flax`: Meta's state_dict (torch key -> array in torch layout)."""
    state_dict = {}
    for path, value in params.items():
        value = np.asarray(value)
        if path == _POINT_EMBEDDINGS_PATH:
            for i in range(_NUM_POINT_EMBEDDINGS):
                state_dict[f"prompt_encoder.point_embeddings.{i}.weight"] = value[i][None]
            continue
        key, kind = _torch_key(path)
        state_dict[key] = np.ascontiguousarray(_to_torch_layout(kind, value))
    return state_dict


def torch_to_flax(
    state_dict: Mapping[str, np.ndarray],
) -> tuple[dict[tuple, np.ndarray], list[str]]:
    """Flax-path -> array for every SAM tensor of `state_dict`, and the keys that are not SAM's."""
    params, unexpected, point_rows = {}, [], {}
    for key, value in state_dict.items():
        value = np.asarray(value, dtype=np.float32)
        if m := _POINT_EMBEDDING.fullmatch(key):
            point_rows[int(m[1])] = value[0]
            continue
        mapped = _map_key(key, value)
        if mapped is None:
            unexpected.append(key)
        else:
            params[mapped[0]] = mapped[1]
    if point_rows:
        rows = range(_NUM_POINT_EMBEDDINGS)
        if sorted(point_rows) != list(rows):
            missing = sorted(set(rows) - set(point_rows))
            unexpected.extend(
                f"prompt_encoder.point_embeddings.{i}.weight (missing)" for i in missing
            )
        else:
            params[_POINT_EMBEDDINGS_PATH] = np.stack([point_rows[i] for i in rows])
    return params, unexpected


@functools.lru_cache(maxsize=8)  # tracing a ViT-H takes tens of seconds
def frozen_param_shapes(config: SamConfig) -> dict[tuple, tuple[int, ...]]:
    """Path -> shape of every non-LoRA variable of a SAM model with `config` (no allocation).
    The cached dict is shared: do not modify it."""
    from resam_jax.models.sam.sam import (
        Sam,
    )  # local: params.py is imported by the converter before jax work

    abstract = nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0)))
    state = nnx.state(abstract, nnx.Not(nnx.LoRAParam))
    return {path: tuple(v.shape) for path, v in nnx.to_flat_state(state)}


def _torch_name(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def check_params(
    params: Mapping[tuple, np.ndarray], config: SamConfig, source: str, unmapped: Sequence[str] = ()
) -> None:
    """Raise CheckpointMismatchError listing every missing, unexpected and mis-shaped tensor.

    `unmapped` are source keys that `torch_to_flax` could not place.
    """
    expected = frozen_param_shapes(config)
    missing = sorted(_torch_name(p) for p in expected.keys() - params.keys())
    extra = sorted([*unmapped, *(_torch_name(p) for p in params.keys() - expected.keys())])
    shapes = sorted(
        f"{_torch_name(p)}: checkpoint {tuple(params[p].shape)}, {config.model_type} expects {expected[p]}"
        for p in expected.keys() & params.keys()
        if tuple(params[p].shape) != expected[p]
    )
    if missing or extra or shapes:
        lines = [f"{source} does not fit SAM {config.model_type}:"]
        for title, items in (("missing", missing), ("unexpected", extra), ("wrong shape", shapes)):
            if items:
                lines.append(
                    f"  {title} ({len(items)}): "
                    + ", ".join(items[:20])
                    + (" ..." if len(items) > 20 else "")
                )
        raise CheckpointMismatchError("\n".join(lines))


def detect_model_type(params: Mapping[tuple, np.ndarray]) -> str | None:
    """The SAM size whose parameter shapes these are, or None."""
    patch = params.get(("image_encoder", "patch_embed", "kernel"))
    if patch is None:
        return None
    depth = 1 + max((p[2] for p in params if p[:2] == ("image_encoder", "blocks")), default=-1)
    for model_type in MODEL_TYPES:
        config = sam_config(model_type)
        if patch.shape[-1] == config.encoder_embed_dim and depth == config.encoder_depth:
            return model_type
    return None


def detect_image_size(params: Mapping[tuple, np.ndarray]) -> int | None:
    """The input side these parameters were trained for (pos_embed's token grid times the patch
    size), or None."""
    patch = params.get(("image_encoder", "patch_embed", "kernel"))
    pos_embed = params.get(("image_encoder", "pos_embed"))
    if patch is None or pos_embed is None or pos_embed.ndim != 4:
        return None
    return pos_embed.shape[1] * patch.shape[0]
