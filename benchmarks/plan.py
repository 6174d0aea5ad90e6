"""Memory and FLOP planner: what one ReSAM train step needs per device, compiled, never run.

    python -m benchmarks.plan --model-type vit_h --batch 4 --instances 50
    python -m benchmarks.plan --attention reference chunked --remat none blocks
    python -m benchmarks.plan --table          # the README's sweep: ViT-B/L/H x batch 1-8 x remat
    python -m benchmarks.plan --family sam2 --model-type b+ --instances 8   # SAM 2.1 Hiera-b+
    python -m benchmarks.plan --family sam2 --table   # the same sweep over SAM 2.1 t / s / b+ / l

Each attention x remat option's train step (benchmarks/jax_step.py's, as the timed benchmarks': base_config in mode
"resam", LoRA from block 6; --family sam2: moved to SAM 2.1 by use_sam2 as configs/*_sam2.py,
LoRA on q, v of the second half of the Hiera blocks) is compiled for one device of the current backend on abstract
inputs (`--batch` images per device, `--instances` instance slots each): no parameter, batch or
activation is allocated. Printed per option, from XLA's compiled memory analysis: the bytes of
the arguments (parameters, optimiser state, batch), outputs, temporaries and the part of the
outputs aliased onto donated arguments, and the total a device must hold, arguments + outputs
+ temporaries - aliased.

FLOPs: XLA's cost analysis counts the body of a loop once, so it understates chunked attention
(`jax.lax.map` over query blocks) and instance chunks (train.instance_chunk_size, a
`jax.lax.scan` over instance slots). The model FLOPs per step are therefore those of the same
step with attention "reference", all instances at once and remat "none" (the same arithmetic,
no recomputation): what model FLOP utilisation (MFU) divides by. The options' own counts are
printed beside them.

XLA:CPU figures are taken with resam_jax.parallel.set_default_xla_flags() applied before the
backend starts, as the run commands do (without it remat saves nothing on XLA:CPU at 1024).
GPU and TPU compile the same program with their own fusion and scheduling: their figures
differ somewhat.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if not __package__:  # run as a script (python benchmarks/plan.py): benchmarks.* importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.jax_step import (
    FAMILIES,
    LORA_START_LAYER,
    LORA_START_LAYERS,
    SAM2_MODEL_TYPES,
    abstract_batch,
    build_jax_step,
    compiled_analysis,
    default_image_size,
    default_lora_start_layer,
    model_flops,
)
from benchmarks.peak_flops import peak_flops
from resam_jax.config import base_config
from resam_jax.models.sam import MODEL_TYPES
from resam_jax.models.sam.architecture import ATTENTION_IMPLEMENTATIONS, REMAT_OPTIONS
from resam_jax.parallel import set_default_xla_flags

__all__ = ["compiled_analysis", "model_flops", "plan"]  # the first two: benchmarks.jax_step's
GIB = 2**30
default_model = base_config().model


def plan(
    model_type: str,
    image_size: int,
    batch: int,
    instances: int,
    attentions: tuple[str, ...] = ("chunked",),
    remats: tuple[str, ...] = ("none", "blocks"),
    dtype: str = "float32",
    lora_start_layer: int | None = None,
    chunk_size: int | None = None,
    instance_chunk_size: int | None = None,
    family: str = "sam",
) -> dict:
    """The model FLOPs of one step and, per attention x remat option, compiled_analysis of
    its step for `batch` images per device with `instances` slots each (chunk_size None:
    base_config's; family "sam2": SAM 2.1, model_type t | s | b+ | l)."""
    lora_start_layer = default_lora_start_layer(model_type, lora_start_layer, family)
    shapes = abstract_batch(image_size, instances, batch)
    options = []
    for attention in attentions:
        for remat in remats:
            jax_step = build_jax_step(
                model_type, image_size, attention, remat, chunk_size, dtype, lora_start_layer,
                instance_chunk_size, family,
            )  # fmt: skip
            options.append(
                {"attention": attention, "remat": remat, "name": jax_step.name,
                 **compiled_analysis(jax_step, shapes)}
            )  # fmt: skip
    flops = model_flops(model_type, image_size, instances, batch, dtype, lora_start_layer, family)
    return {"model_flops": flops, "options": options}


TABLE_MODELS = {"sam": ("vit_b", "vit_l", "vit_h"), "sam2": ("t", "s", "b+", "l")}
TABLE_BATCHES = (1, 2, 4, 8)
TABLE_REMATS = ("none", "blocks")
# XLA:CPU keeps its per-option FLOPs for options without a loop only (module docstring).
LOOPED_ATTENTION = "chunked"
# Assumed utilisations for the seconds-per-step estimates.
MFU_ESTIMATES = (1.0, 0.4)


def print_plan(result: dict, peak: tuple[float, str] | None) -> None:
    """One row per option: bytes per device (GiB) and XLA's FLOPs, under the model FLOPs."""
    flops = result["model_flops"]
    print(f"model FLOPs per step: {flops / 1e12:.4g} TFLOP (attention reference, remat none, "
          "XLA's cost analysis of the lowered step)")  # fmt: skip
    if peak is not None:
        estimates = ", ".join(f"{flops / (peak[0] * u):.3g} s at {u:.0%}" for u in MFU_ESTIMATES)
        print(f"peak {peak[0] / 1e12:.3g} TFLOP/s ({peak[1]}): seconds per step at that MFU: "
              f"{estimates}")  # fmt: skip
    print(f"\n{'attention':<14} {'remat':<33} {'args GiB':>9} {'out GiB':>8} {'temp GiB':>9} "
          f"{'aliased GiB':>12} {'total GiB':>10} {'XLA TFLOP':>10} {'compile s':>10}")  # fmt: skip
    for o in result["options"]:
        xla_flops = "loop" if o["attention"] == LOOPED_ATTENTION else f"{o['flops'] / 1e12:.4g}"
        print(f"{o['name'].split(', ')[1].removesuffix(' attention'):<14} {o['remat']:<33} "
              f"{o['argument_bytes'] / GIB:9.3f} {o['output_bytes'] / GIB:8.3f} "
              f"{o['temp_bytes'] / GIB:9.3f} {o['alias_bytes'] / GIB:12.3f} "
              f"{o['total_bytes'] / GIB:10.3f} {xla_flops:>10} {o['compile_s']:10.1f}")  # fmt: skip
    print("\ntotal = arguments + outputs + temporaries - aliased (outputs written over the donated "
          "state): the bytes a device must hold. XLA TFLOP: the compiled option's own count, "
          "recomputation included; 'loop': chunked attention's loop body is counted once, so "
          "XLA's count is too low (see the model FLOPs).")  # fmt: skip


def print_sweep(args: argparse.Namespace) -> None:
    """The README's table, a markdown row per model x batch x remat as soon as it is known."""
    print("| model | images per device | remat | total GiB | temporaries GiB | model TFLOP per "
          "step | compile s |\n|---|---|---|---|---|---|---|", flush=True)  # fmt: skip
    for model_type in TABLE_MODELS[args.family]:
        for batch in TABLE_BATCHES:
            image_size = args.image_size or default_image_size(model_type, args.family)
            result = plan(
                model_type, image_size, batch, args.instances, (args.attention[0],),
                TABLE_REMATS, args.dtype, args.lora_start_layer, args.chunk_size,
                args.instance_chunk, args.family,
            )  # fmt: skip
            for o in result["options"]:
                print(f"| {model_type} | {batch} | {o['remat']} | {o['total_bytes'] / GIB:.2f} | "
                      f"{o['temp_bytes'] / GIB:.2f} | {result['model_flops'] / 1e12:.2f} | "
                      f"{o['compile_s']:.0f} |", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sam", choices=FAMILIES)
    parser.add_argument(
        "--model-type", default=None,
        help=f"sam: {' | '.join(MODEL_TYPES)} (default vit_b); sam2: "
        f"{' | '.join(SAM2_MODEL_TYPES)} (default b+)",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=1, help="images per device")
    parser.add_argument("--instances", type=int, default=50, help="instance slots per image")
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's")
    parser.add_argument(
        "--attention", nargs="+", default=[default_model.attention],
        choices=ATTENTION_IMPLEMENTATIONS, help="model.attention (default: base_config's)",
    )  # fmt: skip
    parser.add_argument(
        "--remat", nargs="+", default=list(TABLE_REMATS), choices=REMAT_OPTIONS,
        help="model.remat options",
    )  # fmt: skip
    parser.add_argument(
        "--chunk-size", type=int, default=None,
        help=f"model.attention_chunk_size (default: base_config's, {default_model.attention_chunk_size})",
    )  # fmt: skip
    parser.add_argument(
        "--instance-chunk", type=int, default=None,
        help="train.instance_chunk_size, instance slots decoded at a time; 0: all at once "
        f"(default: base_config's, {base_config().train.instance_chunk_size})",
    )  # fmt: skip
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument(
        "--lora-start-layer", type=int, default=None,
        help=f"default: {LORA_START_LAYERS} as the configs, else {LORA_START_LAYER} (sam2: half "
        "the Hiera blocks, as use_sam2)",
    )  # fmt: skip
    parser.add_argument(
        "--table", action="store_true",
        help=f"the README's sweep: {', '.join(TABLE_MODELS['sam'])} (sam2: "
        f"{', '.join(TABLE_MODELS['sam2'])}) x {TABLE_BATCHES} images per device x remat "
        f"{', '.join(TABLE_REMATS)} (first --attention), as markdown",
    )  # fmt: skip
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-FLOP/s estimates")
    args = parser.parse_args()
    model_types = SAM2_MODEL_TYPES if args.family == "sam2" else MODEL_TYPES
    args.model_type = args.model_type or ("b+" if args.family == "sam2" else "vit_b")
    if args.model_type not in model_types:
        parser.error(f"--model-type={args.model_type} for {args.family}; expected one of "
                     f"{', '.join(model_types)}")  # fmt: skip
    if args.family == "sam2" and set(args.attention) - {"reference", "chunked"}:
        parser.error("--family sam2 takes --attention reference | chunked")
    if args.batch < 1 or args.instances < 1:
        parser.error(f"--batch={args.batch} and --instances={args.instances} must be at least 1")
    if args.instance_chunk is not None and args.instance_chunk < 0:
        parser.error(f"--instance-chunk={args.instance_chunk} must be 0 (all at once) or more")

    import jax

    device = jax.devices()[0]
    print(f"ReSAM train step (mode resam), {args.dtype}, {args.instances} instance slots per "
          f"image, compiled for one {device.platform} device ({device.device_kind}, jax "
          f"{jax.__version__}); nothing allocated or run. XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r} (resam_jax.parallel.set_default_xla_flags, as "
          "the run commands set it)", flush=True)  # fmt: skip
    if args.table:
        print_sweep(args)
        return
    image_size = args.image_size or default_image_size(args.model_type, args.family)
    lora_start_layer = default_lora_start_layer(args.model_type, args.lora_start_layer, args.family)
    name = "SAM 2.1" if args.family == "sam2" else "SAM"
    print(f"{name} {args.model_type}, {image_size}x{image_size}, {args.batch} image(s) per "
          f"device, LoRA from block {lora_start_layer}", flush=True)  # fmt: skip
    result = plan(
        args.model_type, image_size, args.batch, args.instances, tuple(args.attention),
        tuple(args.remat), args.dtype, lora_start_layer, args.chunk_size, args.instance_chunk,
        args.family,
    )  # fmt: skip
    print_plan(result, None if args.no_peak else peak_flops(args.dtype))


if __name__ == "__main__":
    set_default_xla_flags()  # before anything starts a JAX backend
    main()
