"""A converted checkpoint directory, the layout both families share:

    DIR/sam_checkpoint.json   {"format", "model_type", "config": {...}, "source": {...}}
    DIR/params/               orbax StandardCheckpointer tree (nested dict of float32 arrays)

A family names its format ("resam-jax/sam/1", "resam-jax/sam2/1"), its config dataclass and its
parameter check, and adds what it needs beside params/ (SAM 2: the video-only tensors).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

HEADER = "sam_checkpoint.json"
PARAMS = "params"


class CheckpointError(ValueError):
    """A directory that cannot be read as a converted checkpoint."""


def orbax_tree(params: Mapping[tuple, np.ndarray]) -> dict:
    """Flax path -> array as the nested dict orbax stores (its keys are strings)."""
    return traverse_util.unflatten_dict({tuple(map(str, path)): v for path, v in params.items()})


def flax_paths(tree: Mapping) -> dict[tuple, np.ndarray]:
    """The inverse of orbax_tree: list indices are ints in Flax paths."""
    return {
        tuple(int(k) if k.isdigit() else k for k in path): np.asarray(value)
        for path, value in traverse_util.flatten_dict(tree).items()
    }


def read_header(directory: str | Path, format: str, missing: Callable[[Path], str]) -> dict:
    """The header of a checkpoint directory in `format`; `missing(directory)` says what the
    directory is instead when it has no header."""
    directory = Path(directory)
    header_path = directory / HEADER
    if not header_path.is_file():
        raise CheckpointError(missing(directory))
    try:
        header = json.loads(header_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{header_path} is not valid JSON: {e}") from None
    found = header.get("format") if isinstance(header, dict) else header
    if found != format:
        raise CheckpointError(f"{header_path}: field 'format' should be {format!r}, got {found!r}")
    return header


def write_params(
    directory: str | Path,
    params: Mapping[tuple, np.ndarray],
    config,
    source: Mapping[str, object],
    format: str,
) -> Path:
    """params/ and the header into `directory` (created); `config` a family's config dataclass.
    Returns the resolved directory."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / PARAMS, orbax_tree(params), force=True)
    checkpointer.wait_until_finished()
    header = {
        "format": format,
        "model_type": config.model_type,
        "config": dataclasses.asdict(config),
        "source": dict(source),
    }
    (directory / HEADER).write_text(json.dumps(header, indent=2) + "\n")
    return directory


def read_params(directory: Path, header: Mapping, config_type: type, make_config: Callable):
    """(config, Flax path -> array) of a checkpoint directory whose `header` was read: the config
    rebuilt by `make_config(model_type, **fields)` from the header's fields that `config_type`
    still has, the parameters as stored (the family checks them against the config)."""
    fields = {f.name for f in dataclasses.fields(config_type)}
    stored = {
        k: tuple(v) if isinstance(v, list) else v
        for k, v in header.get("config", {}).items()
        if k in fields
    }
    try:
        config = make_config(stored.pop("model_type", header.get("model_type")), **stored)
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{directory / HEADER}: bad field 'config': {e}") from None
    try:
        tree = ocp.StandardCheckpointer().restore(directory / PARAMS)
    except Exception as e:  # orbax raises many types for a damaged tree
        raise CheckpointError(f"cannot read parameters under {directory / PARAMS}: {e}") from None
    return config, flax_paths(tree)
