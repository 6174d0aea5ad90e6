"""ReSAM train step: resam-jax against a PyTorch step built as the public ReSAM code builds it.

    python benchmarks/train_step.py                    # vit_b, 1024x1024, batch 1, 8 instances:
                                                       # PyTorch, the defaults, both options off
    python benchmarks/train_step.py --instances 50 --repeats 5
    python benchmarks/train_step.py --side jax --repeats 1 --warmup 0    # one side only
    python benchmarks/train_step.py --variants reference/none chunked/blocks   # jax options
    python benchmarks/train_step.py --side jax --memory-analysis --variants reference/none \
        chunked/none reference/blocks chunked/blocks                      # compile only
    python benchmarks/train_step.py --family sam2      # SAM 2.1 Hiera-b+ (--model-type t|s|b+|l)
    python benchmarks/train_step.py --rounds 2         # the sides in turn twice (a shared machine)

--variants lists resam-jax configurations as ATTENTION[:CHUNK]/REMAT (model.attention,
model.attention_chunk_size, model.remat; default: base_config's, then reference/none),
each timed in its own subprocess in the same run. --memory-analysis runs nothing: it compiles
each variant's step and prints XLA's memory analysis (argument, output, temporary bytes) and
cost analysis (FLOPs per step). XLA_FLAGS gets the XLA:CPU flags the run commands set
(resam_jax.parallel.set_default_xla_flags: the sequential scheduler, YNNPACK for dots only)
unless it names them already.

One image per step, N instances each prompted with 1 positive and 1 negative point.

resam-jax: benchmarks/jax_step.py, resam_jax.method.train_step.make_train_step with
resam_jax.config.base_config() (mode "resam", LoRA from block 6 as for NWPU): the weak view is
encoded once for Refine and Requery, the strong view once with gradients through LoRA.

PyTorch: benchmarks/torch_step.py, segment-anything's Sam with the public code's LoRA and step
(the weak view encoded twice without gradients, for Refine and for Requery, the strong view
once with gradients; the losses vectorised over instance slots).

--family sam2: both sides on SAM 2.1 (--model-type t | s | b+ | l, default b+, at 1024).
resam-jax: the same config moved to SAM 2 by resam_jax.config.use_sam2 (configs/*_sam2.py:
ImageNet pixel normalisation, LoRA rank 4 on q and v of the second half of the Hiera blocks),
the model built by resam_jax.models.build (random weights). PyTorch: `sam2`'s image model
(torch_step.torch_sam2) in the public code's step, restated for SAM 2 as SAM2ImagePredictor
runs it (torch_step.public_train_step's family "sam2": the same LoRA blocks, the same losses).

Both models carry random weights (speed does not depend on them) with their mask logits scaled
(benchmarks.jax_step.MASK_LOGIT_SCALE) so that the teachers keep pseudo-labels: each side
asserts that its timed step TRAINS (valid instances > 0; resam-jax: not skipped; the LoRA
differs from its initial values after the steps) and fails otherwise. Each side runs in its own
subprocess so that its peak resident memory (ru_maxrss, compilation included) is its own; each
hands its freed heap back to the system before its steps (resam-jax after compiling, as the run
commands do: resam_jax.parallel.release_memory_after_compiles; PyTorch once its model is built).
Prints wall and CPU seconds per step (CPU time, summed over the process's threads, is the less
load-sensitive of the two on a shared machine), compile seconds, peak RSS, the load average
around each side, and the speed-up torch / jax. The PyTorch side is segment-anything's model at
the registry's sizes, so --image-size other than the model's own runs with --side jax only.

Each timed jax variant also prints its model FLOP utilisation: MFU = model FLOPs per step
(benchmarks/jax_step.py's model_flops: the step with reference attention and no remat) / median
seconds per step / the device's peak FLOP/s (benchmarks/peak_flops.py: the datasheet figure of
a known accelerator; on a CPU the measured float32 matmul rate of this machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

if not __package__:  # run as a script (python benchmarks/train_step.py): benchmarks.* importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.jax_step import (
    BATCH_SEED,
    FAMILIES,
    SAM2_MODEL_TYPES,
    abstract_batch,
    assert_trains,
    build_jax_step,
    compiled_analysis,
    concrete_state,
    default_image_size,
    default_lora_start_layer,
    lora_changed,
    model_flops,
    synthetic_batch,
)
from benchmarks.peak_flops import peak_flops
from resam_jax.parallel import trim_host_heap

RESULT_PREFIX = "RESULT "
SIDES = ("torch", "jax")


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message} (peak RSS {peak_rss_gib():.2f} GiB)",
          file=sys.stderr, flush=True)  # fmt: skip


def timed_steps(step: Callable[[], None], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Wall and CPU seconds (all threads of this process) of each timed step. On a shared
    machine the wall time grows with the load; the CPU time much less so."""
    for _ in range(warmup):
        step()
    samples = {"wall": [], "cpu": []}
    for i in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        samples["wall"].append(time.perf_counter() - wall)
        samples["cpu"].append(time.process_time() - cpu)
        log(f"step {i + 1}/{repeats}: {samples['wall'][-1]:.2f} s, CPU {samples['cpu'][-1]:.2f} s")
    return samples


def run_jax(args: argparse.Namespace) -> dict:
    import jax

    attention, remat = args.variant.split("/")
    attention, _, chunk = attention.partition(":")
    jax_step = build_jax_step(
        args.model_type, args.image_size, attention, remat, int(chunk) if chunk else None,
        family=args.family,
    )  # fmt: skip
    config, train_step, name = jax_step.config, jax_step.step, jax_step.name
    if args.memory_analysis:
        batch = abstract_batch(args.image_size, args.instances, 1)
        analysis = compiled_analysis(jax_step, batch)
        return {
            "name": name,
            "compile_s": analysis["compile_s"],
            "analysis": {
                "argument_gib": analysis["argument_bytes"] / 2**30,
                "output_gib": analysis["output_bytes"] / 2**30,
                "temp_gib": analysis["temp_bytes"] / 2**30,
                "tflops": analysis["flops"] / 1e12,
            },
        }
    state, frozen = concrete_state(jax_step)
    initial_lora = jax.tree.map(np.array, state.lora)  # host copy: the step donates the state
    batch = jax.device_put(synthetic_batch(args.image_size, args.instances, BATCH_SEED))
    log(f"jax {jax.__version__} on {jax.devices()[0].device_kind}: model and batch ready")

    start = time.perf_counter()
    step = train_step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start
    log(f"compiled in {compile_s:.1f} s")

    metrics = {}

    def one_step():
        nonlocal state, metrics
        state, metrics = step(state, frozen, batch)
        jax.block_until_ready((state, metrics))

    samples = timed_steps(one_step, args.repeats, args.warmup)
    notes = {
        key: float(metrics[key])
        for key in ("loss", "skipped", "valid_instances", "pseudo_label_kept_fraction")
    }
    # The first update's learning rate is 0 (the warmup starts at 0): the LoRA moves from the
    # second step on.
    notes["lora_changed"] = lora_changed(initial_lora, state.lora)
    assert_trains(notes, "resam-jax")  # the last timed step; each step sees the same batch
    peak, peak_source = peak_flops(config.model.dtype)
    return {
        "name": name,
        "samples": samples,
        "compile_s": compile_s,
        "notes": notes,
        "model_flops": model_flops(
            args.model_type,
            args.image_size,
            args.instances,
            1,
            config.model.dtype,
            config.model.lora_start_layer,
            args.family,
        ),  # fmt: skip
        "peak_flops": peak,
        "peak_source": peak_source,
    }


# ------------------------------------------------------------------------ PyTorch (public code)


def run_torch(args: argparse.Namespace) -> dict:
    import torch

    from benchmarks.jax_step import sam2_model_config
    from benchmarks.torch_step import public_train_step, scale_mask_logits_, torch_sam, torch_sam2
    from resam_jax.models.sam import sam_config

    if args.image_size != default_image_size(args.model_type, args.family):
        raise SystemExit("the PyTorch side builds the library's model at its own size: "
                         "use the model's own --image-size or --side jax")  # fmt: skip
    if args.family == "sam2":
        sam = scale_mask_logits_(torch_sam2(sam2_model_config(args.model_type)))
        library = "sam2 1.1.0 image model"
    else:
        sam = scale_mask_logits_(torch_sam(sam_config(args.model_type)))
        library = "segment-anything"
    batch = synthetic_batch(args.image_size, args.instances, BATCH_SEED)
    train_step, notes = public_train_step(
        sam, batch, lora_start_layer=default_lora_start_layer(args.model_type, None, args.family),
        family=args.family,
    )  # fmt: skip
    trim_host_heap()  # what resam-jax's side does after compiling, for the same footing
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads: model and batch ready")
    samples = timed_steps(train_step, args.repeats, args.warmup)
    assert_trains(notes, "PyTorch")
    name = "PyTorch public-code step" + (f" on {library}" if args.family == "sam2" else "")
    return {
        "name": f"{name} (torch {torch.__version__}, float32)",
        "samples": samples,
        "compile_s": None,
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------- main


def run_side(args: argparse.Namespace, side: str, variant: str) -> dict:
    """Runs one side (a jax variant) in a fresh subprocess and returns its result with its
    peak RSS."""
    command = [sys.executable, os.path.abspath(__file__), "--side", side,
               "--family", args.family, "--model-type", args.model_type, "--instances", str(args.instances),
               "--repeats", str(args.repeats), "--warmup", str(args.warmup),
               "--image-size", str(args.image_size), "--variants", variant]  # fmt: skip
    if args.memory_analysis:
        command.append("--memory-analysis")
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    results = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode or not results:
        raise SystemExit(f"--side {side} {variant} failed with exit code {completed.returncode}")
    return json.loads(results[-1][len(RESULT_PREFIX) :])


def print_analysis(args: argparse.Namespace, results: list[dict]) -> None:
    print(
        f"\nReSAM train step, {model_name(args)}, {args.image_size}x{args.image_size}, batch 1, "
        f"{args.instances} instances: XLA memory and cost analysis of the compiled step (not run)"
    )
    print(f"{'implementation':<56} {'args GiB':>9} {'out GiB':>8} {'temp GiB':>9} {'TFLOP':>7} "
          f"{'compile s':>10}")  # fmt: skip
    for r in results:
        a = r["analysis"]
        print(f"{r['name']:<56} {a['argument_gib']:9.3f} {a['output_gib']:8.3f} "
              f"{a['temp_gib']:9.3f} {a['tflops']:7.2f} {r['compile_s']:10.1f}")  # fmt: skip


def print_table(args: argparse.Namespace, results: list[dict]) -> None:
    reference = {r["side"]: r for r in results}.get("torch")

    def median(result, clock):
        return statistics.median(result["samples"][clock])

    def ratio(result, clock):
        return (
            f"{median(reference, clock) / median(result, clock):9.2f}" if reference else f"{'-':>9}"
        )

    print(
        f"\nReSAM train step, {model_name(args)}, {args.image_size}x{args.image_size}, batch 1, "
        f"{args.instances} instances x (1 positive + 1 negative point); median of {args.repeats} "
        f"after {args.warmup} warm-up step(s)"
        f"{f' in each of {args.rounds} rounds, pooled' if args.rounds > 1 else ''}; "
        f"{os.cpu_count()} CPUs"
    )
    print(
        f"{'implementation':<56} {'s/step':>8} {'CPU s/step':>11} {'compile s':>10} "
        f"{'peak RSS GiB':>13} {'speed-up':>9} {'CPU speed-up':>13}"
    )
    for r in results:
        compile_s = f"{r['compile_s']:10.1f}" if r["compile_s"] is not None else f"{'-':>10}"
        print(
            f"{r['name']:<56} {median(r, 'wall'):8.2f} {median(r, 'cpu'):11.2f} {compile_s} "
            f"{r['peak_rss_gib']:13.2f} {ratio(r, 'wall')} {ratio(r, 'cpu'):>13}"
        )
    print("speed-up = PyTorch time / this time (> 1: faster than the public code's step)")
    for r in results:
        if "model_flops" in r:
            print(f"  {r['name']}: MFU {r['model_flops'] / median(r, 'wall') / r['peak_flops']:.1%} "
                  f"= {r['model_flops'] / 1e12:.3g} TFLOP per step (model FLOPs, benchmarks/jax_step.py) "
                  f"/ {median(r, 'wall'):.2f} s / peak {r['peak_flops'] / 1e12:.3g} TFLOP/s "
                  f"({r['peak_source']})")  # fmt: skip
    for r in results:
        wall = ", ".join(f"{s:.1f}" for s in r["samples"]["wall"])
        cpu = ", ".join(f"{s:.1f}" for s in r["samples"]["cpu"])
        load = " -> ".join(f"{x:.2f}" for x in r["load_average"])
        notes = ", ".join(f"{k}={v:g}" for k, v in r["notes"].items())
        print(f"  {r['side']}: wall [{wall}] s, CPU [{cpu}] s, load average {load}; {notes}")


def model_name(args: argparse.Namespace) -> str:
    if args.family == "sam2":
        start = default_lora_start_layer(args.model_type, None, "sam2")
        return f"SAM 2.1 {args.model_type} (LoRA on q, v from Hiera block {start})"
    return f"SAM {args.model_type}"


def default_variant() -> str:
    """The training defaults (resam_jax.config.base_config) as ATTENTION:CHUNK/REMAT."""
    from resam_jax.config import base_config

    model = base_config().model
    return f"{model.attention}:{model.attention_chunk_size}/{model.remat}"


def main() -> None:
    from resam_jax.parallel import release_memory_after_compiles, set_default_xla_flags

    set_default_xla_flags()  # as the run commands do; the child processes inherit it
    release_memory_after_compiles()  # as the run commands do (each process registers its own)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sam", choices=FAMILIES)
    parser.add_argument(
        "--model-type", default=None,
        help="sam: vit_b | vit_l | vit_h (default vit_b); sam2: t | s | b+ | l (default b+)",
    )  # fmt: skip
    parser.add_argument("--instances", type=int, default=8, help="instances per image (N)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--image-size", type=int, default=None, help="default: the model's")
    parser.add_argument("--side", default="both", choices=("both", *SIDES))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        help="resam-jax configurations, each ATTENTION[:CHUNK]/REMAT (model.attention, "
        "model.attention_chunk_size, model.remat), e.g. chunked:128/blocks",
    )
    parser.add_argument(
        "--memory-analysis", action="store_true", help="jax only: compile, print XLA's analyses"
    )
    parser.add_argument(
        "--rounds", type=int, default=1,
        help="run the sides in turn this many times (PyTorch, the jax variants, PyTorch, ...); "
        "the table pools the rounds' samples and each round's ratios follow it",
    )  # fmt: skip
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds={args.rounds} must be at least 1")
    model_types = SAM2_MODEL_TYPES if args.family == "sam2" else ("vit_b", "vit_l", "vit_h")
    args.model_type = args.model_type or model_types[2 if args.family == "sam2" else 0]
    if args.model_type not in model_types:
        parser.error(
            f"--model-type={args.model_type} for {args.family}; expected one of {model_types}"
        )
    if args.variants is None:
        args.variants = [default_variant(), "reference/none"]
    if args.image_size is None:
        args.image_size = default_image_size(args.model_type, args.family)

    if args.side != "both" and os.environ.get("_RESAM_BENCH_CHILD"):
        load_before = os.getloadavg()[0]
        args.variant = args.variants[0]
        result = (run_jax if args.side == "jax" else run_torch)(args)
        result.update(
            side=args.side,
            peak_rss_gib=peak_rss_gib(),
            load_average=(load_before, os.getloadavg()[0]),
        )
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return

    os.environ["_RESAM_BENCH_CHILD"] = "1"
    sides = ("jax",) if args.memory_analysis else SIDES if args.side == "both" else (args.side,)
    results = []
    for round_ in range(1 if args.memory_analysis else args.rounds):
        for side in sides:
            for variant in args.variants if side == "jax" else args.variants[:1]:
                results.append(dict(run_side(args, side, variant), round=round_))
    if args.memory_analysis:
        print_analysis(args, results)
        return
    print_table(args, merge_rounds(results))
    if args.rounds > 1:
        print_rounds(results)


def merge_rounds(results: list[dict]) -> list[dict]:
    """One result per side and variant from the rounds: their samples together, the largest
    peak RSS, the median compile time, the load average from the first round's start to the
    last round's end, the last round's notes."""
    merged: dict[tuple, dict] = {}
    for r in results:
        key = (r["side"], r["name"])
        if key not in merged:
            merged[key] = dict(r, samples={k: list(v) for k, v in r["samples"].items()},
                               compile_list=[r["compile_s"]])  # fmt: skip
            continue
        m = merged[key]
        for clock, values in r["samples"].items():
            m["samples"][clock].extend(values)
        m["peak_rss_gib"] = max(m["peak_rss_gib"], r["peak_rss_gib"])
        m["compile_list"].append(r["compile_s"])
        m["load_average"] = (m["load_average"][0], r["load_average"][1])
        m["notes"] = r["notes"]
    for m in merged.values():
        compiles = [c for c in m.pop("compile_list") if c is not None]
        m["compile_s"] = statistics.median(compiles) if compiles else None
    return list(merged.values())


def print_rounds(results: list[dict]) -> None:
    """Each round's ratios against that round's PyTorch step: sides taken minutes apart, under
    about the same load."""
    print(
        "per round (each against that round's PyTorch step; wall / CPU speed-up, peak RSS ratio):"
    )
    for round_ in sorted({r["round"] for r in results}):
        rows = [r for r in results if r["round"] == round_]
        reference = next((r for r in rows if r["side"] == "torch"), None)
        if reference is None:
            continue
        for r in rows:
            if r is reference:
                continue
            wall, cpu = (statistics.median(reference["samples"][c]) / statistics.median(r["samples"][c])
                         for c in ("wall", "cpu"))  # fmt: skip
            load = " -> ".join(
                f"{x:.2f}" for x in (reference["load_average"][0], r["load_average"][1])
            )
            print(f"  round {round_ + 1}: {r['name']}: {wall:.2f}x / {cpu:.2f}x, memory "
                  f"{r['peak_rss_gib'] / reference['peak_rss_gib']:.2f}x (load average {load})")  # fmt: skip


if __name__ == "__main__":
    main()
