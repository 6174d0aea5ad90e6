"""The resam-jax ReSAM train step the benchmarks time and plan: one module that
benchmarks/train_step.py, benchmarks/plan.py and benchmarks/device_check.py import (it imports
none of them).

- `synthetic_batch` / `abstract_batch`: one image of the batch contract with N rectangles, each
  prompted with 1 positive + 1 negative point (the arrays, or their shapes);
- `build_jax_step`: base_config() in mode "resam" (epoch 1) with the given model options, jitted
  and built on abstract shapes (nothing allocated): what --memory-analysis and the planner
  compile. family "sam2": the same config moved to SAM 2.1 by resam_jax.config.use_sam2, as
  configs/*_sam2.py (pixel_norm "sam", LoRA rank 4 on q, v of the second half of the Hiera
  blocks), the model built by resam_jax.models.build as a run builds it (random weights);
- `concrete_state`: the random-weight model the timed runs train, with its mask logits scaled
  (`MASK_LOGIT_SCALE`) so that the step TRAINS: a random SAM's mask logits lie within about
  +-1 (std 0.1 to 0.25), under Refine's confidence threshold (p (1 - H(p)) > 0.3 needs a logit
  above about 1.1), so every teacher mask would be empty, every instance dropped and the step
  skipped. Multiplying the last layer of each mask-token hypernetwork MLP (kernel and bias) by
  `MASK_LOGIT_SCALE` multiplies the mask logits by it, keeps their signs, and leaves the
  program (shapes, FLOPs) as it is; the PyTorch step (benchmarks/torch_step.py) scales its
  model the same way (SAM 2's decoder has the same hypernetwork MLPs). `assert_trains` checks
  the step's metrics (and, where given, that the LoRA changed);
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
    from resam_jax.models.sam2 import Sam2Config

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


FAMILIES = ("sam", "sam2")
# The SAM 2.1 sizes the benchmarks take (config.model.model_type, resam_jax.config.SAM2_SIZES),
# and the tests' small Hiera (resam_jax.models.sam2.config).
SAM2_MODEL_TYPES = ("t", "s", "b+", "l", "hiera_test")


def default_lora_start_layer(
    model_type: str, lora_start_layer: int | None = None, family: str = "sam"
) -> int:
    """`lora_start_layer` if given, else the configs' choice for `model_type` (SAM 2: the
    second half of the Hiera blocks, resam_jax.config.use_sam2)."""
    if lora_start_layer is not None:
        return lora_start_layer
    if family == "sam2":
        return sam2_model_config(model_type).depth // 2
    return LORA_START_LAYERS.get(model_type, LORA_START_LAYER)


def sam2_model_config(model_type: str, **overrides) -> Sam2Config:
    """The Sam2Config of a SAM 2 size as config.model.model_type names it (t | s | b+ | l, or
    hiera_test)."""
    from resam_jax.models.sam2 import sam2_config
    from resam_jax.models.sam2.build import model_type_of

    return sam2_config(model_type_of(model_type), **overrides)


def default_image_size(model_type: str, family: str = "sam") -> int:
    """The model's own input size (SAM 2: Sam2Config's, 1024 for Meta's sizes)."""
    if family == "sam2":
        return sam2_model_config(model_type).image_size
    from resam_jax.models.sam import sam_config

    return sam_config(model_type).image_size


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
    sam: SamConfig | Sam2Config  # the model's configuration (config.model.family's)
    step: Callable  # jax.jit(make_train_step(...)) donating the state: (state, frozen, batch)
    state: Any  # the TrainState at step 0, as jax.ShapeDtypeStruct leaves
    frozen: Any  # the frozen SAM variables, as jax.ShapeDtypeStruct leaves

    @property
    def family(self) -> str:
        return self.config.model.get("family", "sam")

    def new_model(self, seed: int) -> Any:
        """The model of this step with random weights drawn from `seed`."""
        return new_model(self.config, self.sam, seed)


def new_model(config: ml_collections.ConfigDict, sam: Any, seed: int) -> Any:
    """SAM (`Sam(sam)`) or, for config.model.family "sam2", SAM 2 as a run builds it
    (resam_jax.models.build with no checkpoint: random weights from `seed`)."""
    from flax import nnx

    if config.model.get("family", "sam") == "sam2":
        import logging

        from resam_jax import models

        config = config.copy_and_resolve_references()
        config.seed = seed
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # build's warning: no checkpoint, random weights
        try:
            return models.build(config)
        finally:
            logging.disable(previous)
    from resam_jax.models.sam import Sam

    return Sam(sam, rngs=nnx.Rngs(seed))


def build_jax_step(
    model_type: str,
    image_size: int,
    attention: str,
    remat: str,
    chunk_size: int | None = None,
    dtype: str = "float32",
    lora_start_layer: int | None = None,
    instance_chunk_size: int | None = None,
    family: str = "sam",
) -> JaxStep:
    """The train step of resam_jax.config.base_config() in mode "resam" (epoch 1) with these
    model options (chunk_size, instance_chunk_size None: base_config's; lora_start_layer None:
    the configs' choice, default_lora_start_layer), on abstract shapes. family "sam2":
    base_config moved to SAM 2.1 `model_type` by use_sam2, as configs/*_sam2.py."""
    import jax
    from flax import nnx

    from resam_jax.config import base_config, use_sam2
    from resam_jax.method.train_state import create_train_state, split_model
    from resam_jax.method.train_step import make_train_step
    from resam_jax.models.sam import sam_config

    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; expected one of {FAMILIES}")
    config = base_config()
    config.method.mode = "resam"
    if family == "sam2":
        # use_sam2 takes Meta's sizes; the tests' hiera_test goes through the same fields.
        use_sam2(config, model_type if model_type in ("t", "s", "b+", "l") else "b+")
        config.model.update(model_type=model_type, checkpoint="")
        config.data.image_size = image_size
    lora_start_layer = default_lora_start_layer(model_type, lora_start_layer, family)
    config.model.update(
        lora_start_layer=lora_start_layer, attention=attention, remat=remat, dtype=dtype
    )
    if chunk_size is not None:
        config.model.attention_chunk_size = chunk_size
    if instance_chunk_size is not None:
        config.train.instance_chunk_size = instance_chunk_size
    if family == "sam2":
        sam = sam2_model_config(
            model_type,
            image_size=image_size,
            lora_rank=config.model.lora_rank,
            lora_start_layer=config.model.lora_start_layer,
            lora_targets=tuple(config.model.lora_targets),
            dtype=config.model.dtype,
            attention=config.model.attention,
            attention_chunk_size=config.model.attention_chunk_size,
            remat=config.model.remat,
        )
        feature_dim = sam.d_model
    else:
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
        feature_dim = sam.prompt_embed_dim
    if attention == "chunked":
        attention = f"chunked {config.model.attention_chunk_size}"
    graphdef, lora, frozen = split_model(nnx.eval_shape(lambda: new_model(config, sam, 0)))
    state = jax.eval_shape(lambda lora: create_train_state(lora, feature_dim, config), lora)
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
    embedding, are multiplied by `scale` (module docstring). SAM or SAM 2."""
    for mlp in model.mask_decoder.output_hypernetworks_mlps:
        last = mlp.layers[-1]
        last.kernel[...] = last.kernel[...] * scale
        if getattr(last, "bias", None) is not None:
            last.bias[...] = last.bias[...] * scale
    return model


def concrete_state(jax_step: JaxStep) -> tuple[Any, Any]:
    """(TrainState at step 0, frozen variables) of a random model (seed config.seed) with its
    mask logits scaled, so that the step trains."""
    from resam_jax.method.train_state import create_train_state, split_model

    model = scale_mask_logits(jax_step.new_model(jax_step.config.seed))
    _, lora, frozen = split_model(model)
    return create_train_state(lora, model.feature_dim, jax_step.config), frozen


class StepDoesNotTrain(AssertionError):
    """A timed step was skipped or kept no instance: its time is not that of training."""


def assert_trains(metrics: Mapping[str, Any], side: str) -> None:
    """Raises StepDoesNotTrain unless the step kept an instance (valid_instances > 0) and, where
    the metrics say, was not skipped and changed the LoRA (lora_changed)."""
    valid = float(metrics["valid_instances"])
    skipped = bool(float(metrics.get("skipped", 0)))
    if valid <= 0 or skipped:
        raise StepDoesNotTrain(
            f"the {side} step does not train (valid_instances={valid:g}, skipped={skipped}): "
            "its teacher kept no pseudo-label"
        )
    if not bool(metrics.get("lora_changed", True)):
        raise StepDoesNotTrain(f"the {side} step does not train: its LoRA did not change")


def lora_changed(before: Any, after: Any) -> bool:
    """Whether any LoRA leaf differs between two states' `lora` (host copies of `before`: the
    step donates its state)."""
    import jax

    return any(
        not np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after))
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
    family: str = "sam",
) -> float:
    """FLOPs of one train step as the model needs them: the step with attention "reference"
    and all instances decoded at once (no loop whose body XLA's cost analysis would count
    once) and remat "none" (no recomputation), counted by XLA's cost analysis of the lowered
    program, before XLA's optimisations, so that no compile is needed."""
    jax_step = build_jax_step(
        model_type, image_size, "reference", "none", dtype=dtype,
        lora_start_layer=default_lora_start_layer(model_type, lora_start_layer, family),
        instance_chunk_size=0, family=family,
    )  # fmt: skip
    lowered = jax_step.step.lower(
        jax_step.state, jax_step.frozen, abstract_batch(image_size, instances, batch)
    )
    return lowered.cost_analysis()["flops"]
