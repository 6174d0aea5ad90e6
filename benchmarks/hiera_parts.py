"""Where the SAM 2.1 Hiera-b+ time goes: its parts timed on both sides, same run.

    python benchmarks/hiera_parts.py                 # every part, --repeats 7
    python benchmarks/hiera_parts.py --parts matmul gelu mlp

benchmarks/encoder.py and train_step.py time the whole encoder and the whole step; this script
times the pieces they are made of, at the shapes Hiera-b+ runs at 1024 x 1024 (stage 3: a 64 x
64 grid of 448 channels, 8 heads of 56; windows of 14 x 14; stage 1: 256 x 256 x 112, windows
of 8), so that a ratio of the whole can be traced to the part that makes it:

- matmul: [4096, 448] @ [448, 1792], the first MLP layer of a stage-3 block;
- gelu: exact (erf) GELU on its output, [4096, 1792];
- mlp: Linear 448 -> 1792, GELU, Linear 1792 -> 448 on 4096 tokens;
- window_attention: 25 windows of 196 tokens, 8 heads: resam-jax's
  layers.grouped_window_attention against F.scaled_dot_product_attention, forward and forward +
  backward (the gradient of sum(sin(out)) with respect to q, k and v);
- global_attention: 4096 tokens, 8 heads: layers.attention chunked by --chunk-size queries
  against F.scaled_dot_product_attention, forward and forward + backward;
- attention_products: the global attention's two matrix products alone, (q k^T) v over the 8
  heads, unscaled, no softmax (the scores materialised): what each side's matmul library does
  with attention's shapes (contraction over 56, or an output of width 56), against which the
  fused kernel's time above can be read;
- block_s1, block_s3_window, block_s3_global: whole MultiScaleBlocks (Hiera-b+ blocks 0, 6 and
  12: stage 1 windowed, stage 3 windowed, stage 3 global) against `sam2`'s, forward.

Each side runs in a process of its own (XLA and PyTorch thread pools never share the cores),
resam-jax with the run commands' XLA flags (resam_jax.parallel.set_default_xla_flags); each part
is jitted, and timed as the median of --repeats calls after one warm-up (compilation). Random
inputs and weights: the time does not depend on them, and both implementations of each part
are pinned to each other by the parity tests (tests/test_sam2_*.py). Prints milliseconds per
call and the ratio PyTorch / resam-jax (> 1: resam-jax faster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: benchmarks.* importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

PARTS = (
    "matmul",
    "gelu",
    "mlp",
    "window_attention",
    "global_attention",
    "attention_products",
    "block_s1",
    "block_s3_window",
    "block_s3_global",
)
BLOCKS = {"block_s1": 0, "block_s3_window": 6, "block_s3_global": 12}  # Hiera-b+ block indices
TOKENS, DIM, HIDDEN, HEADS, HEAD_DIM = 4096, 448, 1792, 8, 56  # stage 3 at 1024
WINDOWS, WINDOW_TOKENS = 25, 196  # 64 x 64 padded to 70 x 70: 5 x 5 windows of 14 x 14
RESULT_PREFIX = "RESULT "


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up: compilation for resam-jax
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples)


def block_grid(index: int) -> tuple[int, int, int]:
    """(grid side, input channels, output channels) of Hiera-b+ block `index` at 1024."""
    from resam_jax.models.sam2 import sam2_config
    from resam_jax.models.sam2.build import model_type_of

    side = 256
    for i, spec in enumerate(sam2_config(model_type_of("b+")).blocks()):
        if i == index:
            return side, spec.dim, spec.dim_out
        side //= 2 if spec.q_pool else 1
    raise ValueError(index)


def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def normal(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    arrays = {
        "tokens": normal(TOKENS, DIM),
        "w1": normal(DIM, HIDDEN) / np.sqrt(DIM),
        "b1": normal(HIDDEN) * 0.1,
        "w2": normal(HIDDEN, DIM) / np.sqrt(HIDDEN),
        "b2": normal(DIM) * 0.1,
        "hidden": normal(TOKENS, HIDDEN),
        "window_qkv": normal(3, WINDOWS, WINDOW_TOKENS, HEADS, HEAD_DIM),
        "global_qkv": normal(3, 1, TOKENS, HEADS, HEAD_DIM),
    }
    for name, index in BLOCKS.items():
        side, dim, _ = block_grid(index)
        arrays[name] = normal(1, side, side, dim)
    return {name: array.astype(np.float32) for name, array in arrays.items()}


def jax_parts(args: argparse.Namespace) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from resam_jax.models.sam2 import sam2_config
    from resam_jax.models.sam2.build import model_type_of
    from resam_jax.models.sam2.hiera import MultiScaleBlock
    from resam_jax.models.sam2.layers import attention, gelu, grouped_window_attention

    a = {k: jnp.asarray(v) for k, v in inputs(np.random.default_rng(0)).items()}

    def run(fn, *operands):
        compiled = jax.jit(fn)
        return median_ms(lambda: jax.block_until_ready(compiled(*operands)), args.repeats)

    def forward_and_backward(name, fn, qkv):
        results[f"{name} forward"] = run(lambda t: fn(*t), qkv)
        grad = jax.grad(lambda t: jnp.sum(jnp.sin(fn(*t))))
        results[f"{name} forward+backward"] = run(grad, qkv)

    results: dict[str, float] = {}
    if "matmul" in args.parts:
        results["matmul"] = run(jnp.matmul, a["tokens"], a["w1"])
    if "gelu" in args.parts:
        results["gelu"] = run(gelu, a["hidden"])
    if "mlp" in args.parts:
        results["mlp"] = run(
            lambda x, w1, b1, w2, b2: gelu(x @ w1 + b1) @ w2 + b2,
            a["tokens"], a["w1"], a["b1"], a["w2"], a["b2"],
        )  # fmt: skip
    if "window_attention" in args.parts:
        forward_and_backward("window_attention", grouped_window_attention, a["window_qkv"])
    if "global_attention" in args.parts:
        chunked = lambda q, k, v: attention(q, k, v, args.chunk_size)  # noqa: E731
        forward_and_backward("global_attention", chunked, a["global_qkv"])
    if "attention_products" in args.parts:
        q, k, v = a["global_qkv"][:, 0].transpose(0, 2, 1, 3)  # [heads, tokens, d] each
        results["attention_products"] = run(lambda q, k, v: (q @ k.swapaxes(1, 2)) @ v, q, k, v)
    config = sam2_config(
        model_type_of("b+"), attention="chunked", attention_chunk_size=args.chunk_size
    )
    specs = list(config.blocks())
    for name, index in BLOCKS.items():
        if name in args.parts:
            block = MultiScaleBlock(specs[index], config.mlp_ratio, config, rngs=nnx.Rngs(0))
            graphdef, state = nnx.split(block)
            results[name] = run(lambda s, x, g=graphdef: nnx.merge(g, s)(x), state, a[name])
    return results


def torch_parts(args: argparse.Namespace) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    from benchmarks.torch_step import torch_sam2
    from resam_jax.models.sam2 import sam2_config
    from resam_jax.models.sam2.build import model_type_of

    t = {k: torch.from_numpy(v) for k, v in inputs(np.random.default_rng(0)).items()}

    def run(fn, *operands):
        def call():
            with torch.no_grad():
                fn(*operands)

        return median_ms(call, args.repeats)

    def forward_and_backward(name, qkv):
        heads_first = [x.transpose(1, 2).contiguous() for x in qkv]  # as sam2's attention has them
        results[f"{name} forward"] = run(F.scaled_dot_product_attention, *heads_first)
        leaves = [x.clone().requires_grad_(True) for x in heads_first]

        def grad():
            torch.sin(F.scaled_dot_product_attention(*leaves)).sum().backward()

        results[f"{name} forward+backward"] = median_ms(grad, args.repeats)

    results: dict[str, float] = {}
    if "matmul" in args.parts:
        results["matmul"] = run(torch.matmul, t["tokens"], t["w1"])
    if "gelu" in args.parts:
        results["gelu"] = run(F.gelu, t["hidden"])
    if "mlp" in args.parts:
        w1, w2 = t["w1"].T.contiguous(), t["w2"].T.contiguous()  # nn.Linear's [out, in]
        results["mlp"] = run(
            lambda x: F.linear(F.gelu(F.linear(x, w1, t["b1"])), w2, t["b2"]), t["tokens"]
        )
    if "window_attention" in args.parts:
        forward_and_backward("window_attention", t["window_qkv"])
    if "global_attention" in args.parts:
        forward_and_backward("global_attention", t["global_qkv"])
    if "attention_products" in args.parts:
        q, k, v = t["global_qkv"][:, 0].transpose(1, 2).contiguous()  # [heads, tokens, d] each
        results["attention_products"] = run(lambda q, k, v: (q @ k.transpose(1, 2)) @ v, q, k, v)
    if any(name in args.parts for name in BLOCKS):
        trunk = torch_sam2(sam2_config(model_type_of("b+"))).image_encoder.trunk
        for name, index in BLOCKS.items():
            if name in args.parts:
                results[name] = run(trunk.blocks[index], t[name])
    return results


def run_side(args: argparse.Namespace, side: str) -> dict[str, float]:
    command = [sys.executable, os.path.abspath(__file__), "--side", side,
               "--repeats", str(args.repeats), "--chunk-size", str(args.chunk_size),
               "--parts", *args.parts]  # fmt: skip
    completed = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    results = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if completed.returncode or not results:
        raise SystemExit(f"--side {side} failed with exit code {completed.returncode}")
    return json.loads(results[-1][len(RESULT_PREFIX) :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chunk-size", type=int, default=128,
                        help="global attention's query chunk (the configs' attention_chunk_size)")  # fmt: skip
    parser.add_argument("--side", choices=("jax", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        parts = jax_parts(args) if args.side == "jax" else torch_parts(args)
        print(RESULT_PREFIX + json.dumps(parts), flush=True)
        return

    from resam_jax.parallel import set_default_xla_flags

    set_default_xla_flags()  # as the run commands do; the jax child inherits it
    torch_ms, jax_ms = run_side(args, "torch"), run_side(args, "jax")
    print(f"Hiera-b+ parts at 1024, float32, {os.cpu_count()} CPUs; ms per call, median of "
          f"{args.repeats}; global attention chunked by {args.chunk_size}")  # fmt: skip
    print(f"{'part':<36} {'PyTorch':>9} {'resam-jax':>10} {'ratio':>7}")
    for name, reference in torch_ms.items():
        ours = jax_ms[name]
        print(f"{name:<36} {reference:9.1f} {ours:10.1f} {reference / ours:6.2f}x")


if __name__ == "__main__":
    main()
