"""SAM image-encoder speed: resam-jax (float32, bfloat16) against segment-anything, same run.

    python benchmarks/encoder.py                   # vit_b, 1024x1024, batch 1, default options
    python benchmarks/encoder.py --model-type vit_l --batch 2 --repeats 5
    python benchmarks/encoder.py --attention reference chunked --dtypes float32
    python benchmarks/encoder.py --memory-analysis --attention reference chunked  # compile only
    python benchmarks/encoder.py --family sam2     # SAM 2.1 Hiera-b+ against sam2, time + memory
    python benchmarks/encoder.py --family sam2 --model-type t --attention chunked --repeats 5

--attention picks SamConfig.attention (one row per implementation and dtype; by default the
SamConfig default, chunked by --chunk-size queries, and "reference"). With
--memory-analysis nothing runs: each forward is compiled and XLA's memory analysis (argument,
output and temporary bytes) and cost analysis (FLOPs) are printed.

XLA_FLAGS gets the flags the run commands set (resam_jax.parallel.set_default_xla_flags) unless
it names them already. Both models carry random weights (speed does not depend on them). Prints
seconds per image for each and the ratio reference / resam-jax (> 1 means
resam-jax is faster). On a machine with a GPU both frameworks use it.

--family sam2 (SAM 2.1, --model-type t | s | b+ | l, default b+; float32): what
SAM2ImagePredictor.set_image computes (forward_image: Hiera trunk, FPN neck, conv_s0 / conv_s1;
no_mem_embed added to the stride-16 level) against resam-jax's Sam2.encode, jitted, on the SAME
weights: a child process builds `sam2`'s image model (benchmarks/torch_step.py torch_sam2, torch
seed 0, every tensor perturbed so that no parameter keeps a constant value), saves it as a
converted checkpoint (resam_jax.models.sam2.params.torch_to_flax), and asserts that both
implementations' features of the same random input agree within tests/tolerances.py's SAM 2
parity bound before anything is timed. Then each side (PyTorch under torch.no_grad; resam-jax
once per --attention option, by default the run configs' chunked by 128 and "reference") runs
in a process of its own: seconds per forward (median of --repeats after one warm-up call, which
for resam-jax is the compilation), CPU seconds, and its peak resident memory (ru_maxrss), whole
and over the process's peak once model and input were loaded ("idle"), the load average around
each.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a script (python benchmarks/encoder.py): benchmarks.* importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resam_jax.models.sam import Sam, sam_config
from resam_jax.models.sam.architecture import ATTENTION_IMPLEMENTATIONS, SamConfig


def time_call(fn, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up (compilation) call."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def jax_encoder(model_type: str, dtype: str, attention: str, chunk: int, images: np.ndarray):
    config = sam_config(model_type, dtype=dtype, attention=attention, attention_chunk_size=chunk)
    model = Sam(config, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(x))
    x = jax.device_put(jnp.asarray(images))
    return lambda: encode(state, x).block_until_ready()


def compiled_encoder_analysis(
    model_type: str, dtype: str, attention: str, chunk: int, batch: int
) -> dict:
    """XLA's memory and cost analysis of the compiled forward; nothing is allocated or run."""
    config = sam_config(model_type, dtype=dtype, attention=attention, attention_chunk_size=chunk)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Sam(config, rngs=nnx.Rngs(0))))
    images = jax.ShapeDtypeStruct((batch, config.image_size, config.image_size, 3), jnp.float32)
    encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(x))
    compiled = encode.lower(state, images).compile()
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return {
        "argument_gib": memory.argument_size_in_bytes / 2**30,
        "output_gib": memory.output_size_in_bytes / 2**30,
        "temp_gib": memory.temp_size_in_bytes / 2**30,
        "gflops": cost.get("flops", float("nan")) / 1e9,
    }


def torch_encoder(model_type: str, images: np.ndarray):
    import torch
    from segment_anything import sam_model_registry

    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = sam_model_registry[model_type]().image_encoder.to(device).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)

    def run():
        with torch.inference_mode():
            encoder(x)
        if device == "cuda":
            torch.cuda.synchronize()

    return run


# ------------------------------------------------------------------------ SAM 2.1 (--family sam2)

SAM2_SIZES = ("t", "s", "b+", "l", "hiera_test")
RESULT_PREFIX = "RESULT "
CHILD_ENV = "_RESAM_ENCODER_CHILD"


def peak_rss_gib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def sam2_torch_model(model_type: str):
    """`sam2`'s image model at `model_type`, seed 0, perturbed: the same weights in every
    process (the parity child converts them for resam-jax)."""
    from benchmarks.jax_step import sam2_model_config
    from benchmarks.torch_step import perturb_, torch_sam2

    model = torch_sam2(sam2_model_config(model_type)).eval()
    # As tests/sam2_reference.py: the position embeddings (which the bicubic interpolation
    # reads) at a larger scale.
    perturb_(model, 0, position_scale=0.5, positions=("pos_embed", "no_mem_embed"), keep=())
    return model


def sam2_images(model_type: str, batch: int) -> np.ndarray:
    """Normalised encoder input [batch, S, S, 3] (what SAM2Transforms gives: about N(0, 1))."""
    from benchmarks.jax_step import sam2_model_config

    size = sam2_model_config(model_type).image_size
    return np.random.default_rng(0).normal(size=(batch, size, size, 3)).astype(np.float32)


def weights_checksum(model) -> float:
    return float(sum(p.double().sum() for p in model.state_dict().values()))


def sam2_parity(args: argparse.Namespace) -> dict:
    """Child "parity": `sam2`'s features and resam-jax's (each --attention option) of the same
    input on the same weights, compared at tests/tolerances.py's bound; the weights are saved
    as a converted checkpoint in args.workdir for the resam-jax timing children."""
    import torch

    from benchmarks.jax_step import sam2_model_config
    from benchmarks.torch_step import sam2_features
    from resam_jax.models.sam2.checkpoint import load_sam2, save_sam2_params
    from resam_jax.models.sam2.params import torch_to_flax
    from tests.tolerances import SAM2_EMBEDDING_ATOL

    model = sam2_torch_model(args.model_type)
    params, _, unknown = torch_to_flax({k: v.numpy() for k, v in model.state_dict().items()})
    assert not unknown, unknown
    config = sam2_model_config(args.model_type)
    source = {"path": f"sam2 {args.model_type}, torch seed 0, perturbed (benchmarks/encoder.py)"}
    save_sam2_params(Path(args.workdir) / "sam2", params, config, source)
    images = sam2_images(args.model_type, args.batch)
    with torch.no_grad():
        theirs = sam2_features(model, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
    theirs = [theirs["image_embed"], *theirs["high_res_feats"]]
    theirs = [t.permute(0, 2, 3, 1).numpy() for t in theirs]
    checksum = weights_checksum(model)
    del model
    diffs = {}
    for attention in args.attention:
        ours = load_sam2(Path(args.workdir) / "sam2", **sam2_options(attention, args.chunk_size))
        features = nnx.jit(lambda model, x: model.encode(x))(ours, jnp.asarray(images))
        ours = [features["image_embed"], *features["high_res_feats"]]
        diff = max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(ours, theirs))
        scale = max(float(np.abs(b).max()) for b in theirs)
        diffs[attention] = diff
        print(f"parity {attention}: max |difference| {diff:.2e} (features up to {scale:.2f}; "
              f"bound {SAM2_EMBEDDING_ATOL:g})", file=sys.stderr, flush=True)  # fmt: skip
        if not diff <= SAM2_EMBEDDING_ATOL:
            raise SystemExit(
                f"resam-jax's SAM 2 features ({attention} attention) differ from sam2's by "
                f"{diff:.2e} > {SAM2_EMBEDDING_ATOL:g} (tests/tolerances.py): not timed"
            )
    return {"max_abs_diff": diffs, "bound": SAM2_EMBEDDING_ATOL, "checksum": checksum}


def sam2_options(attention: str, chunk_size: int) -> dict:
    return {"attention": attention, "attention_chunk_size": chunk_size}


def timed(fn, repeats: int) -> dict:
    """Wall and CPU seconds of each of `repeats` calls after one warm-up call, and the peak
    RSS before the warm-up ("idle": model and input loaded) and after."""
    idle = peak_rss_gib()
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
        print(f"  {wall[-1]:.2f} s (CPU {cpu[-1]:.2f} s)", file=sys.stderr, flush=True)
    return {"wall": wall, "cpu": cpu, "first_s": first, "idle_gib": idle}


def sam2_side(args: argparse.Namespace) -> dict:
    """Child "torch" or "jax:ATTENTION": one implementation's forward, timed."""
    from resam_jax.parallel import trim_host_heap

    images = sam2_images(args.model_type, args.batch)
    if args.side == "torch":
        import torch

        model = sam2_torch_model(args.model_type)
        from benchmarks.torch_step import sam2_features

        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        checksum = weights_checksum(model)
        if abs(checksum - args.checksum) > 1e-6 * abs(args.checksum):
            raise SystemExit(f"the torch weights differ from the parity run's ({checksum})")

        def forward():
            with torch.no_grad():
                sam2_features(model, x)

        trim_host_heap()  # what resam-jax's side does after compiling, for the same footing

        name = f"sam2 {args.model_type} (torch {torch.__version__}, float32, no_grad)"
        result = timed(forward, args.repeats)
        result["threads"] = torch.get_num_threads()
    else:
        from resam_jax.models.sam2.checkpoint import load_sam2

        attention = args.side.split(":", 1)[1]
        model = load_sam2(Path(args.workdir) / "sam2", **sam2_options(attention, args.chunk_size))
        graphdef, state = nnx.split(model)
        encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(x))
        x = jax.device_put(jnp.asarray(images))

        def forward():
            jax.block_until_ready(encode(state, x))

        label = f"chunked {args.chunk_size}" if attention == "chunked" else attention
        name = f"resam-jax (jax {jax.__version__}, float32, {label} attention)"
        result = timed(forward, args.repeats)
    return dict(result, name=name, peak_gib=peak_rss_gib())


def run_child(args: argparse.Namespace, side: str, checksum: float = 0.0) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--family", "sam2", "--side", side,
               "--model-type", args.model_type, "--batch", str(args.batch), "--repeats",
               str(args.repeats), "--chunk-size", str(args.chunk_size), "--workdir",
               args.workdir, "--checksum", repr(checksum), "--attention", *args.attention]  # fmt: skip
    load_before = os.getloadavg()[0]
    completed = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        text=True,
        check=False,
        env=dict(os.environ, **{CHILD_ENV: "1"}),
    )
    results = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode or not results:
        raise SystemExit(f"--side {side} failed with exit code {completed.returncode}")
    result = json.loads(results[-1][len(RESULT_PREFIX) :])
    result["load_average"] = (load_before, os.getloadavg()[0])
    return result


def sam2_main(args: argparse.Namespace) -> None:
    if os.environ.get(CHILD_ENV):
        result = sam2_parity(args) if args.side == "parity" else sam2_side(args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return
    from benchmarks.jax_step import sam2_model_config

    size = sam2_model_config(args.model_type).image_size
    with tempfile.TemporaryDirectory(prefix="resam_sam2_encoder_") as workdir:
        args.workdir = workdir
        parity = run_child(args, "parity")
        rows = []
        if not args.skip_reference:
            rows.append(run_child(args, "torch", parity["checksum"]))
        for attention in args.attention:
            rows.append(run_child(args, f"jax:{attention}"))
    print(f"\nSAM 2.1 {args.model_type} image encoder (SAM2ImagePredictor.set_image's features), "
          f"{size}x{size}, batch {args.batch}, float32, {os.cpu_count()} CPUs; median of "
          f"{args.repeats} after 1 warm-up (resam-jax: the compilation)")  # fmt: skip
    print("parity before timing: max |difference| of the features " + ", ".join(
        f"{a} {d:.1e}" for a, d in parity["max_abs_diff"].items()
    ) + f" (bound {parity['bound']:g}, tests/tolerances.py)")  # fmt: skip
    print(f"{'implementation':<58} {'s/image':>8} {'CPU s':>7} {'first s':>8} {'peak GiB':>9} "
          f"{'over idle':>10} {'speed-up':>9} {'memory':>7} {'over idle':>10}")  # fmt: skip
    reference = rows[0] if not args.skip_reference else None
    for r in rows:
        seconds = statistics.median(r["wall"]) / args.batch
        cpu = statistics.median(r["cpu"]) / args.batch
        over = r["peak_gib"] - r["idle_gib"]
        if reference:
            speed = f"{statistics.median(reference['wall']) / statistics.median(r['wall']):9.2f}"
            reference_over = reference["peak_gib"] - reference["idle_gib"]
            memory = f"{r['peak_gib'] / reference['peak_gib']:7.2f} {over / reference_over:10.2f}"
        else:
            speed, memory = f"{'-':>9}", f"{'-':>7} {'-':>10}"
        print(f"{r['name']:<58} {seconds:8.2f} {cpu:7.2f} {r['first_s']:8.1f} "
              f"{r['peak_gib']:9.2f} {over:10.2f} {speed} {memory}")  # fmt: skip
    print("speed-up = PyTorch s / this s; over idle = peak RSS - the peak once model and input "
          "were loaded; memory = this peak RSS / PyTorch's, then the same of over idle")  # fmt: skip
    for r in rows:
        wall = ", ".join(f"{s:.2f}" for s in r["wall"])
        load = " -> ".join(f"{x:.2f}" for x in r["load_average"])
        print(f"  {r['name']}: [{wall}] s, load average {load}")


def main() -> None:
    from resam_jax.parallel import release_memory_after_compiles, set_default_xla_flags

    set_default_xla_flags()  # as the run commands do; the child processes inherit it
    release_memory_after_compiles()  # as the run commands do (each process registers its own)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sam", choices=("sam", "sam2"))
    parser.add_argument(
        "--model-type", default=None,
        help="sam: vit_b | vit_l | vit_h (default vit_b); sam2: t | s | b+ | l (default b+)",
    )  # fmt: skip
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-reference", action="store_true", help="time resam-jax only")
    parser.add_argument(
        "--attention",
        nargs="+",
        default=None,
        help="one row per implementation and dtype; default: the SamConfig default and "
        f"reference (sam: {', '.join(ATTENTION_IMPLEMENTATIONS)}); sam2: chunked (as the run "
        "configs) and reference (also dot_product)",
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument(
        "--chunk-size", type=int, default=SamConfig.attention_chunk_size,
        help="queries per block of chunked attention (SamConfig.attention_chunk_size)",
    )  # fmt: skip
    parser.add_argument(
        "--memory-analysis", action="store_true", help="compile only; print XLA's analyses"
    )
    # --family sam2's child processes
    parser.add_argument("--side", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checksum", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.family == "sam2":
        args.model_type = args.model_type or "b+"
        if args.model_type not in SAM2_SIZES:
            parser.error(f"--model-type={args.model_type} for sam2; expected one of {SAM2_SIZES}")
        args.attention = args.attention or ["chunked", "reference"]
        from resam_jax.models.sam2.config import ATTENTION_IMPLEMENTATIONS as SAM2_ATTENTION

        bad = set(args.attention) - set(SAM2_ATTENTION)
        if bad or args.memory_analysis:
            parser.error(
                f"--family sam2 takes --attention {' | '.join(SAM2_ATTENTION)}, no --memory-analysis"
            )
        sam2_main(args)
        return
    args.model_type = args.model_type or "vit_b"
    if args.model_type not in ("vit_b", "vit_l", "vit_h"):
        parser.error(f"--model-type={args.model_type}; expected vit_b, vit_l or vit_h")
    args.attention = args.attention or [SamConfig.attention, "reference"]
    if bad := set(args.attention) - set(ATTENTION_IMPLEMENTATIONS):
        parser.error(f"--attention {sorted(bad)}; expected some of {ATTENTION_IMPLEMENTATIONS}")
    if args.memory_analysis:
        print(f"{args.model_type} image encoder forward, batch {args.batch}, compiled on "
              f"{jax.devices()[0].device_kind} (jax {jax.__version__}), not run")  # fmt: skip
        print(f"{'attention':<12} {'dtype':<9} {'args GiB':>9} {'out GiB':>8} {'temp GiB':>9} "
              f"{'GFLOP':>8}")  # fmt: skip
        for attention in args.attention:
            for dtype in args.dtypes:
                a = compiled_encoder_analysis(
                    args.model_type, dtype, attention, args.chunk_size, args.batch
                )
                print(f"{attention:<12} {dtype:<9} {a['argument_gib']:9.3f} {a['output_gib']:8.3f} "
                      f"{a['temp_gib']:9.3f} {a['gflops']:8.1f}", flush=True)  # fmt: skip
        return

    size = sam_config(args.model_type).image_size
    images = np.random.default_rng(0).normal(size=(args.batch, size, size, 3)).astype(np.float32)
    print(
        f"{args.model_type} image encoder, {size}x{size}, batch {args.batch}, "
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}, median of {args.repeats}"
    )

    rows = []
    if not args.skip_reference:
        import torch

        reference = time_call(torch_encoder(args.model_type, images), args.repeats) / args.batch
        rows.append((f"segment-anything (torch {torch.__version__}, float32)", reference))
    for attention in args.attention:
        for dtype in args.dtypes:
            encoder = jax_encoder(args.model_type, dtype, attention, args.chunk_size, images)
            seconds = time_call(encoder, args.repeats) / args.batch
            rows.append((f"resam-jax ({dtype}, {attention} attention)", seconds))

    reference = None if args.skip_reference else rows[0][1]
    print(f"{'implementation':<48} {'s/image':>9} {'speed-up':>9}")
    for name, seconds in rows:
        ratio = f"{reference / seconds:9.2f}" if reference else f"{'-':>9}"
        print(f"{name:<48} {seconds:9.3f} {ratio}")


if __name__ == "__main__":
    main()
