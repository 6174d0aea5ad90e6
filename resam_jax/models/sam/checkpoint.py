"""Converted SAM checkpoints: an orbax tree of the frozen parameters plus a small JSON header.

Layout of a checkpoint directory (resam_jax.models.checkpoint_files, shared with SAM 2):
    DIR/sam_checkpoint.json   {"format", "model_type", "config": {...}, "source": {...}}
    DIR/params/               orbax StandardCheckpointer tree (nested dict of float32 arrays)

A run's LoRA export (WORKDIR/export/lora) is an orbax tree of the LoRA parameters alone;
`fold_lora` adds it into a checkpoint's qkv kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from resam_jax.models import checkpoint_files
from resam_jax.models.checkpoint_files import HEADER, CheckpointError, flax_paths
from resam_jax.models.sam.architecture import SamConfig, sam_config
from resam_jax.models.sam.params import check_params
from resam_jax.models.sam.sam import Sam

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


def _is_lora_export(directory: Path) -> bool:
    """An orbax tree whose leaves are LoRA adapters (its _METADATA lists their paths)."""
    try:
        return "lora_" in (directory / "_METADATA").read_text()
    except (OSError, UnicodeDecodeError):
        return False


def _is_train_checkpoint(directory: Path) -> bool:
    """WORKDIR/checkpoints/<step> (its state and data items) or WORKDIR/checkpoints itself."""
    steps = [directory] + [d for d in directory.glob("[0-9]*") if d.is_dir()]
    return any((d / "state").is_dir() and (d / "data").is_dir() for d in steps)


def checkpoint_kind(directory: str | Path) -> str:
    """What a folder handed over as a checkpoint is: "sam" (converted, or a run's
    export/sam_merged), "lora" (a run's export/lora), "train" (a run's training checkpoint),
    "workdir" (a run's workdir), "missing" or "other"."""
    directory = Path(directory)
    if not directory.is_dir():
        return "missing"
    if (directory / HEADER).is_file():
        return "sam"
    if _is_lora_export(directory):
        return "lora"
    if _is_train_checkpoint(directory):
        return "train"
    if (directory / "export" / "sam_merged" / HEADER).is_file():
        return "workdir"
    return "other"


def _instead(run_workdir: Path) -> str:
    merged = run_workdir / "export" / "sam_merged"
    if (merged / HEADER).is_file():
        return f"pass {merged} (SAM with the run's LoRA folded in) instead"
    return (
        f"pass {merged} instead once the run has finished (python -m resam_jax.main with "
        f"--workdir {run_workdir} resumes it)"
    )


def not_a_sam_checkpoint(directory: str | Path) -> str:
    """Why `directory` is no converted SAM checkpoint: what the folder is and what to pass
    instead (the one place that tells the kinds apart, for every command)."""
    directory = Path(directory).resolve()
    kind = checkpoint_kind(directory)
    prefix = f"{directory} is not a converted SAM checkpoint"
    if kind == "lora":
        return (
            f"{prefix}: it is a LoRA export (a run's adapters alone, no SAM weights); "
            + _instead(directory.parents[1])
            + ", or fold it into the SAM it adapted: python -m weights_convert.export_sam "
            f"--checkpoint BASE_SAM --lora {directory} --output adapted.pth"
        )
    if kind == "train":
        workdir = directory.parent if directory.name == "checkpoints" else directory.parents[1]
        return f"{prefix}: it is a run's training checkpoint (what the run resumes from); " + (
            _instead(workdir)
        )
    if kind == "workdir":
        return f"{prefix}: it is a run's workdir; " + _instead(directory)
    # convert_sam refuses a folder holding anything else: name a new one then.
    target = directory if kind == "missing" or not any(directory.iterdir()) else "weights/sam_vit_b"
    return f"{prefix}: {directory / HEADER} is missing. " + conversion_help(target)


def read_header(directory: str | Path) -> dict:
    """A converted SAM checkpoint's header (CheckpointError naming what the folder is if not)."""
    return checkpoint_files.read_header(directory, FORMAT, not_a_sam_checkpoint)


def save_sam_params(
    directory: str | Path,
    params: Mapping[tuple, np.ndarray],
    config: SamConfig,
    source: Mapping[str, object],
) -> None:
    """Write converted frozen parameters (Flax path -> array) as a checkpoint directory."""
    check_params(params, config, str(source.get("path", "parameters")))
    checkpoint_files.write_params(directory, params, config, source, FORMAT)


def load_sam_params(directory: str | Path) -> tuple[SamConfig, dict[tuple, np.ndarray]]:
    """Read a checkpoint directory: its SAM config and its parameters (Flax path -> array)."""
    directory = Path(directory).resolve()
    header = read_header(directory)
    config, params = checkpoint_files.read_params(directory, header, SamConfig, sam_config)
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
    return sam_from_params(dataclasses.replace(config, **overrides), params)


def sam_from_params(config: SamConfig, params: Mapping[tuple, np.ndarray]) -> Sam:
    """A Sam built abstractly and filled with `params` (Flax path -> array, every non-LoRA
    variable); only the LoRA parameters are initialised (seed 0, B = 0), so the frozen weights
    are never drawn at random first (a lower peak while loading: docs/benchmarks.md)."""
    structure = {}

    def init_lora():
        graphdef, lora, frozen = nnx.split(Sam(config, rngs=nnx.Rngs(0)), nnx.LoRAParam, ...)
        # One trace serves both: the model's structure and the frozen variables' paths and
        # dtypes are read off it (tracing a ViT-H costs tens of seconds), and XLA drops the
        # unused initialisers.
        structure["graphdef"] = graphdef
        structure["dtypes"] = {path: v.get_value().dtype for path, v in nnx.to_flat_state(frozen)}
        return lora

    lora = jax.jit(init_lora)()
    frozen = traverse_util.unflatten_dict(
        {
            path: jax.numpy.asarray(params[path], dtype)
            for path, dtype in structure["dtypes"].items()
        }
    )
    return nnx.merge(structure["graphdef"], lora, frozen)


def load_lora(directory: str | Path) -> dict[tuple, np.ndarray]:
    """A run's LoRA export (WORKDIR/export/lora): Flax path -> array."""
    directory = Path(directory).resolve()
    try:
        tree = ocp.StandardCheckpointer().restore(directory)
    except Exception as e:  # orbax raises many types for a missing or damaged tree
        raise CheckpointError(
            f"cannot read {directory} as a LoRA export (a run's export/lora): {e}"
        ) from None
    adapters = flax_paths(tree)
    if not adapters or any(p[-2:-1] not in (("lora_q",), ("lora_v",)) for p in adapters):
        raise CheckpointError(
            f"{directory} is not a LoRA export: expected paths ending in "
            f"lora_q/lora_a ... lora_v/lora_b, got {sorted(map(str, adapters))[:4]}"
        )
    return adapters


def fold_lora(
    params: Mapping[tuple, np.ndarray], adapters: Mapping[tuple, np.ndarray], source: str = "LoRA"
) -> dict[tuple, np.ndarray]:
    """SAM's parameters with each block's LoRA folded into its fused qkv projection.

    The block computes x @ qkv.kernel + [x @ A_q @ B_q, 0, x @ A_v @ B_v], so adding A_q @ B_q
    to the q third of the kernel (columns :dim) and A_v @ B_v to the v third (2*dim:) gives
    the same function without LoRA. `source` names the adapters in errors.
    """
    params = dict(params)
    for path in sorted({p[:-2] for p in adapters}):  # (..., "attn")
        kernel_path = path + ("qkv", "kernel")
        if kernel_path not in params:
            raise CheckpointError(f"{source}: {'.'.join(map(str, path))} is not a SAM block")
        kernel = np.array(params[kernel_path])
        dim = kernel.shape[0]
        for name, columns in (("lora_q", slice(0, dim)), ("lora_v", slice(2 * dim, 3 * dim))):
            delta = adapters[path + (name, "lora_a")] @ adapters[path + (name, "lora_b")]
            if delta.shape != (dim, dim):
                raise CheckpointError(
                    f"{source}: {'.'.join(map(str, path + (name,)))} is {delta.shape[0]} wide, "
                    f"the checkpoint's attention is {dim} wide (a LoRA of another SAM size?)"
                )
            kernel[:, columns] += delta.astype(kernel.dtype)
        params[kernel_path] = kernel
    return params


def _flat_values(state: nnx.State) -> dict[tuple, np.ndarray]:
    return {path: np.asarray(jax.device_get(v.get_value())) for path, v in nnx.to_flat_state(state)}


def merged_sam_params(lora: nnx.State, frozen: nnx.State) -> dict[tuple, np.ndarray]:
    """SAM's parameters with each block's LoRA folded into its fused qkv projection."""
    return fold_lora(_flat_values(frozen), _flat_values(lora))


def export_merged_sam(
    directory: str | Path, lora: nnx.State, frozen: nnx.State, config: SamConfig, source: dict
) -> None:
    """A plain SAM checkpoint (no LoRA) equal to the adapted model."""
    save_sam_params(
        directory,
        merged_sam_params(lora, frozen),
        dataclasses.replace(config, lora_start_layer=None),
        source,
    )


def export_merged(model: Sam, directory: str | Path, source: Mapping) -> None:
    """`model` with its LoRA folded in, as a converted checkpoint that load_sam reads;
    `source` goes to the header (what it was adapted from, its pixel input)."""
    _, lora, frozen = nnx.split(model, nnx.LoRAParam, ...)
    export_merged_sam(directory, lora, frozen, model.config, dict(source))
