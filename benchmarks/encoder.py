"""SAM image-encoder speed: resam-jax (float32, bfloat16) against segment-anything, same run.

    python benchmarks/encoder.py                   # vit_b, 1024x1024, batch 1, default options
    python benchmarks/encoder.py --model-type vit_l --batch 2 --repeats 5
    python benchmarks/encoder.py --attention reference chunked --dtypes float32
    python benchmarks/encoder.py --memory-analysis --attention reference chunked  # compile only

--attention picks SamConfig.attention (one row per implementation and dtype; by default the
SamConfig default, chunked by --chunk-size queries, and "reference"). With
--memory-analysis nothing runs: each forward is compiled and XLA's memory analysis (argument,
output and temporary bytes) and cost analysis (FLOPs) are printed.

Both models carry random weights (speed does not depend on them). Prints
seconds per image for each and the ratio reference / resam-jax (> 1 means
resam-jax is faster). On a machine with a GPU both frameworks use it.
"""

from __future__ import annotations

import argparse
import statistics
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-reference", action="store_true", help="time resam-jax only")
    parser.add_argument(
        "--attention",
        nargs="+",
        default=[SamConfig.attention, "reference"],
        choices=ATTENTION_IMPLEMENTATIONS,
        help="one row per implementation and dtype; default: the SamConfig default and reference",
    )
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument(
        "--chunk-size", type=int, default=SamConfig.attention_chunk_size,
        help="queries per block of chunked attention (SamConfig.attention_chunk_size)",
    )  # fmt: skip
    parser.add_argument(
        "--memory-analysis", action="store_true", help="compile only; print XLA's analyses"
    )
    args = parser.parse_args()
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
