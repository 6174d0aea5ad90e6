"""Converted SAM checkpoints: an orbax tree of the frozen parameters plus a small JSON header.

Layout of a checkpoint directory:
    DIR/sam_checkpoint.json   {"format", "model_type", "config": {...}, "source": {...}}
    DIR/params/               orbax StandardCheckpointer tree (nested dict of float32 arrays)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from resam_jax.model.config import SamConfig, sam_config
from resam_jax.model.params import check_params
from resam_jax.model.sam import Sam

HEADER = "sam_checkpoint.json"
FORMAT = "resam-jax/sam/1"


# Meta's released SAM checkpoints (the segment-anything repository's model zoo).
SAM_DOWNLOADS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}


def conversion_help(directory: str | Path, model_type: str = "vit_b") -> str:
    """How to get a converted checkpoint into `directory`: the one place that says it."""
    url = SAM_DOWNLOADS.get(model_type, SAM_DOWNLOADS["vit_b"])
    return (
        f"Download {url}, then convert it once:\n  python -m weights_convert.convert_sam "
        f"--checkpoint {url.rsplit('/', 1)[1]} --output {directory}"
    )


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read as a converted SAM checkpoint."""


def _nest(flat: Mapping[tuple, np.ndarray]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(str(key), {})
        node[str(path[-1])] = value
    return tree


def _flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        key = int(key) if key.isdigit() else key
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix + (key,)))
        else:
            flat[prefix + (key,)] = value
    return flat


def read_header(directory: str | Path) -> dict:
    directory = Path(directory)
    header_path = directory / HEADER
    if not header_path.is_file():
        raise CheckpointError(
            f"{directory} is not a converted SAM checkpoint: {header_path} is missing. "
            + conversion_help(directory)
        )
    try:
        header = json.loads(header_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{header_path} is not valid JSON: {e}") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(
            f"{header_path}: field 'format' should be {FORMAT!r}, got {header.get('format') if isinstance(header, dict) else header!r}"
        )
    return header


def save_sam_params(
    directory: str | Path,
    params: Mapping[tuple, np.ndarray],
    config: SamConfig,
    source: Mapping[str, object],
) -> None:
    """Write converted frozen parameters (Flax path -> array) as a checkpoint directory."""
    check_params(params, config, str(source.get("path", "parameters")))
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "params", _nest(params), force=True)
    checkpointer.wait_until_finished()
    header = {
        "format": FORMAT,
        "model_type": config.model_type,
        "config": dataclasses.asdict(config),
        "source": dict(source),
    }
    (directory / HEADER).write_text(json.dumps(header, indent=2) + "\n")


def load_sam_params(directory: str | Path) -> tuple[SamConfig, dict[tuple, np.ndarray]]:
    """Read a checkpoint directory: its SAM config and its parameters (Flax path -> array)."""
    directory = Path(directory).resolve()
    header = read_header(directory)
    fields = {f.name for f in dataclasses.fields(SamConfig)}
    stored = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in header.get("config", {}).items()
        if k in fields
    }
    try:
        config = sam_config(stored.pop("model_type", header.get("model_type")), **stored)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{directory / HEADER}: bad field 'config': {e}") from None
    try:
        tree = ocp.StandardCheckpointer().restore(directory / "params")
    except Exception as e:  # orbax raises many types for a damaged tree
        raise CheckpointError(f"cannot read parameters under {directory / 'params'}: {e}") from None
    params = {path: np.asarray(value) for path, value in _flatten(tree).items()}
    check_params(params, config, str(directory))
    return config, params


def load_sam(directory: str | Path, **overrides) -> Sam:
    """A Sam model with the weights of a converted checkpoint.

    `overrides` change fields of the stored config that do not alter the
    converted weights: LoRA (`lora_rank`, `lora_start_layer`), `dtype` and the memory options
    (`attention`, `attention_chunk_size`, `remat`).
    LoRA parameters keep their fresh initialisation (B = 0, so the model is
    exactly the checkpoint's SAM).
    """
    allowed = {
        "lora_rank",
        "lora_start_layer",
        "dtype",
        "attention",
        "attention_chunk_size",
        "remat",
    }
    if unknown := set(overrides) - allowed:
        raise ValueError(f"load_sam cannot override {sorted(unknown)}; only {sorted(allowed)}")
    config, params = load_sam_params(directory)
    config = dataclasses.replace(config, **overrides)
    model = Sam(config, rngs=nnx.Rngs(0))
    set_frozen_params(model, params)
    return model


def set_frozen_params(model: Sam, params: Mapping[tuple, np.ndarray]) -> None:
    """Overwrite every non-LoRA variable of `model` with `params` (Flax path -> array)."""
    state = nnx.state(model, nnx.Not(nnx.LoRAParam))
    for path, variable in nnx.to_flat_state(state):
        value = params[path]
        variable.set_value(jax.numpy.asarray(value, dtype=variable.get_value().dtype))
    nnx.update(model, state)
