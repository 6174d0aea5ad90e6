"""The resam-jax ReSAM train step the benchmarks time and plan: one module that
benchmarks/train_step.py, benchmarks/plan.py and benchmarks/device_check.py import (it imports
none of them).

- `synthetic_batch` / `abstract_batch`: one image of the batch contract with N rectangles, each
  prompted with 1 positive + 1 negative point (the arrays, or their shapes);
- `build_jax_step`: base_config() in mode "resam" (epoch 1) with the given model options, jitted
  and built on abstract shapes (nothing allocated): what --memory-analysis and the planner
  compile;
- `concrete_state`: the random-weight model the timed runs train, with its mask logits scaled
  (`MASK_LOGIT_SCALE`) so that the step TRAINS: a random SAM's mask logits lie within about
  +-1 (std 0.1 to 0.25), under Refine's confidence threshold (p (1 - H(p)) > 0.3 needs a logit
  above about 1.1), so every teacher mask would be empty, every instance dropped and the step
  skipped. Multiplying the last layer of each mask-token hypernetwork MLP (kernel and bias) by
  `MASK_LOGIT_SCALE` multiplies the mask logits by it, keeps their signs, and leaves the
  program (shapes, FLOPs) as it is; the PyTorch step (benchmarks/torch_step.py) scales its
  model the same way. `assert_trains` checks the step's metrics;
- `compiled_analysis` / `model_flops`: XLA's memory and cost analysis of a compiled step, and
  the model FLOPs per step MFU divides by.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import ml_collections

    from resam_jax.models.sam import Sam, SamConfig

# LoRA from encoder block 6, as configs/nwpu.py (the public config_nwpu) and base_config; the
# configs' choice for the small models (configs/demo.py's for the tiny SAM, configs/study_nwpu.py's
# for the small one).
LORA_START_LAYER = 6
LORA_START_LAYERS = {"tiny": 0, "small": 2}
# The strong view's photometric augmentation does not change the work; a fixed seed keeps the
# batch identical for both sides.
BATCH_SEED = 0
# The factor on the random model's mask logits (module docstring): with it, ViT-B's teacher
# keeps a refined mask for 8 of 8 instances of the synthetic batch, the tiny SAM for 8 of 8 and
# 32 of 50.
MASK_LOGIT_SCALE = 30.0


def default_lora_start_layer(model_type: str, lora_start_layer: int | None = None) -> int:
    """`lora_start_layer` if given, else the configs' choice for `model_type`."""
    if lora_start_layer is not None:
        return lora_start_layer
    return LORA_START_LAYERS.get(model_type, LORA_START_LAYER)


def synthetic_batch(
    image_size: int, instances: int, seed: int = BATCH_SEED
) -> dict[str, np.ndarray]:
    """One image (B = 1) following the batch contract: a 4:3 image resized to the longest side
    and padded centred, `instances` non-overlapping rectangles, 1 positive + 1 negative point."""
    from resam_jax.data.photometric import strong_augment

    rng = np.random.default_rng(seed)
    height, width = image_size * 3 // 4, image_size
    top = (image_size - height) // 2
    content = np.clip(
        rng.normal(110, 25, (height, width, 3)) + np.linspace(0, 40, width)[None, :, None], 0, 255
    ).astype(np.uint8)
    grid = int(np.ceil(np.sqrt(instances)))
    cell_h, cell_w = height // grid, width // grid
    masks = np.zeros((instances, image_size, image_size), bool)
    boxes = np.zeros((instances, 4), np.float32)
    points = np.zeros((instances, 2, 2), np.float32)
    for i in range(instances):
        row, col = divmod(i, grid)
        h, w = (
            rng.integers(cell_h // 4, cell_h * 3 // 4),
            rng.integers(cell_w // 4, cell_w * 3 // 4),
        )
        y0, x0 = (
            row * cell_h + rng.integers(0, cell_h - h),
            col * cell_w + rng.integers(0, cell_w - w),
        )
        content[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
        y0 += top
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
        boxes[i] = (x0, y0, x0 + w - 1, y0 + h - 1)
        points[i, 0] = (rng.integers(x0, x0 + w), rng.integers(y0, y0 + h))
        while True:  # negative: anywhere in the content outside this instance
            x, y = rng.integers(0, width), rng.integers(top, top + height)
            if not masks[i, y, x]:
                points[i, 1] = (x, y)
                break
    weak = np.zeros((image_size, image_size, 3), np.uint8)
    strong = np.zeros_like(weak)
    weak[top : top + height] = content
    strong[top : top + height] = strong_augment(content, rng, probability=1.0)
    content_mask = np.zeros((image_size, image_size), bool)
    content_mask[top : top + height] = True
    sample = {
        "weak_image": weak,
        "strong_image": strong,
        "content_mask": content_mask,
        "masks": masks,
        "boxes": boxes,
        "points": points,
        "point_labels": np.tile(np.array([1, 0], np.int32), (instances, 1)),
        "instance_valid": np.ones((instances,), bool),
        "image_id": np.int32(0),
        "original_size": np.array([height, width], np.int32),
        "resized_size": np.array([height, width], np.int32),
        "pad_offset": np.array([top, 0], np.int32),
    }
    return {key: np.asarray(value)[None] for key, value in sample.items()}


def abstract_batch(image_size: int, instances: int, batch: int) -> dict:
    """The shapes and dtypes of `batch` images of synthetic_batch (jax.ShapeDtypeStruct)."""
    import jax

    one = synthetic_batch(image_size, instances, BATCH_SEED)
    return {k: jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype) for k, v in one.items()}


@dataclasses.dataclass(frozen=True)
class JaxStep:
    """One resam-jax configuration's ReSAM train step, built on abstract shapes (nothing is
    allocated): what the timed runs, --memory-analysis and benchmarks/plan.py compile."""

    name: str  # for the tables, e.g. "resam-jax (float32, chunked 128 attention, remat blocks)"
    config: ml_collections.ConfigDict  # base_config() with mode "resam" and these options
    sam: SamConfig
    step: Callable  # jax.jit(make_train_step(...)) donating the state: (state, frozen, batch)
    state: Any  # the TrainState at step 0, as jax.ShapeDtypeStruct leaves
    frozen: Any  # the frozen SAM variables, as jax.ShapeDtypeStruct leaves


def build_jax_step(
    model_type: str,
    image_size: int,
    attention: str,
    remat: str,
    chunk_size: int | None = None,
    dtype: str = "float32",
    lora_start_layer: int = LORA_START_LAYER,
    instance_chunk_size: int | None = None,
) -> JaxStep:
    """The train step of resam_jax.config.base_config() in mode "resam" (epoch 1) with these
    model options (chunk_size, instance_chunk_size None: base_config's), on abstract shapes."""
    import jax
    from flax import nnx

    from resam_jax.config import base_config
    from resam_jax.method.train_state import create_train_state, split_model
    from resam_jax.method.train_step import make_train_step
    from resam_jax.models.sam import Sam, sam_config

    config = base_config()
    config.method.mode = "resam"
    config.model.update(
        lora_start_layer=lora_start_layer, attention=attention, remat=remat, dtype=dtype
    )
    if chunk_size is not None:
        config.model.attention_chunk_size = chunk_size
    if instance_chunk_size is not None:
        config.train.instance_chunk_size = instance_chunk_size
    sam = sam_config(
        model_type,
        image_size=image_size,
        lora_rank=config.model.lora_rank,
        lora_start_layer=config.model.lora_start_layer,
        dtype=config.model.dtype,
        attention=config.model.attention,
        attention_chunk_size=config.model.attention_chunk_size,
        remat=config.model.remat,
    )
    if attention == "chunked":
        attention = f"chunked {config.model.attention_chunk_size}"
    graphdef, lora, frozen = split_model(nnx.eval_shape(lambda: Sam(sam, rngs=nnx.Rngs(0))))
    state = jax.eval_shape(
        lambda lora: create_train_state(lora, sam.prompt_embed_dim, config), lora
    )
    step = jax.jit(
        make_train_step(graphdef, config, steps_per_epoch=10**6), donate_argnums=0
    )  # epoch 1
    return JaxStep(
        name=f"resam-jax ({dtype}, {attention} attention, remat {remat})",
        config=config,
        sam=sam,
        step=step,
        state=state,
        frozen=frozen,
    )


def scale_mask_logits(model: Sam, scale: float = MASK_LOGIT_SCALE) -> Sam:
    """Multiplies the last layer (kernel and bias) of every mask-token hypernetwork MLP by
    `scale`, in place: the mask logits, a dot product of those outputs with the upscaled
    embedding, are multiplied by `scale` (module docstring)."""
    for mlp in model.mask_decoder.output_hypernetworks_mlps:
        last = mlp.layers[-1]
        last.kernel[...] = last.kernel[...] * scale
        if getattr(last, "bias", None) is not None:
            last.bias[...] = last.bias[...] * scale
    return model


def concrete_state(jax_step: JaxStep) -> tuple[Any, Any]:
    """(TrainState at step 0, frozen variables) of a random model (seed config.seed) with its
    mask logits scaled, so that the step trains."""
    from flax import nnx

    from resam_jax.method.train_state import create_train_state, split_model
    from resam_jax.models.sam import Sam

    model = scale_mask_logits(Sam(jax_step.sam, rngs=nnx.Rngs(jax_step.config.seed)))
    _, lora, frozen = split_model(model)
    return create_train_state(lora, jax_step.sam.prompt_embed_dim, jax_step.config), frozen


class StepDoesNotTrain(AssertionError):
    """A timed step was skipped or kept no instance: its time is not that of training."""


def assert_trains(metrics: Mapping[str, Any], side: str) -> None:
    """Raises StepDoesNotTrain unless the step kept an instance (valid_instances > 0) and, where
    the metrics say, was not skipped."""
    valid = float(metrics["valid_instances"])
    skipped = bool(float(metrics.get("skipped", 0)))
    if valid <= 0 or skipped:
        raise StepDoesNotTrain(
            f"the {side} step does not train (valid_instances={valid:g}, skipped={skipped}): "
            "its teacher kept no pseudo-label"
        )


def compiled_analysis(jax_step: JaxStep, batch: dict) -> dict:
    """Compiles `jax_step` for `batch` (shapes only; nothing is allocated or run): XLA's memory
    analysis in bytes, its cost analysis's FLOPs and the compile seconds."""
    start = time.perf_counter()
    compiled = jax_step.step.lower(jax_step.state, jax_step.frozen, batch).compile()
    compile_s = time.perf_counter() - start
    analysis = memory_and_cost(compiled)
    analysis["compile_s"] = compile_s
    return analysis


def memory_and_cost(compiled: Any) -> dict:
    """XLA's memory analysis (bytes) and cost analysis (FLOPs) of a compiled program; total =
    arguments + outputs + temporaries - aliased."""
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    analysis = {
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "code_bytes": memory.generated_code_size_in_bytes,
        "flops": (cost or {}).get("flops", float("nan")),
    }
    analysis["total_bytes"] = (
        analysis["argument_bytes"]
        + analysis["output_bytes"]
        + analysis["temp_bytes"]
        - analysis["alias_bytes"]
    )
    return analysis


def model_flops(
    model_type: str,
    image_size: int,
    instances: int,
    batch: int,
    dtype: str = "float32",
    lora_start_layer: int | None = None,
) -> float:
    """FLOPs of one train step as the model needs them: the step with attention "reference"
    and all instances decoded at once (no loop whose body XLA's cost analysis would count
    once) and remat "none" (no recomputation), counted by XLA's cost analysis of the lowered
    program, before XLA's optimisations, so that no compile is needed."""
    jax_step = build_jax_step(
        model_type, image_size, "reference", "none", dtype=dtype,
        lora_start_layer=default_lora_start_layer(model_type, lora_start_layer),
        instance_chunk_size=0,
    )  # fmt: skip
    lowered = jax_step.step.lower(
        jax_step.state, jax_step.frozen, abstract_batch(image_size, instances, batch)
    )
    return lowered.cost_analysis()["flops"]
