"""SAM image-encoder speed: resam-jax (float32, bfloat16) against segment-anything, same run.

    python benchmarks/encoder.py                   # vit_b, 1024x1024, batch 1
    python benchmarks/encoder.py --model-type vit_l --batch 2 --repeats 5

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

from resam_jax.model import Sam, sam_config


def time_call(fn, repeats: int) -> float:
    """Median seconds of `fn()` after one warm-up (compilation) call."""
    fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def jax_encoder(model_type: str, dtype: str, images: np.ndarray):
    model = Sam(sam_config(model_type, dtype=dtype), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(x))
    x = jax.device_put(jnp.asarray(images))
    return lambda: encode(state, x).block_until_ready()


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
    args = parser.parse_args()

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
    for dtype in ("float32", "bfloat16"):
        seconds = time_call(jax_encoder(args.model_type, dtype, images), args.repeats) / args.batch
        rows.append((f"resam-jax ({dtype})", seconds))

    reference = None if args.skip_reference else rows[0][1]
    print(f"{'implementation':<48} {'s/image':>9} {'speed-up':>9}")
    for name, seconds in rows:
        ratio = f"{reference / seconds:9.2f}" if reference else f"{'-':>9}"
        print(f"{name:<48} {seconds:9.3f} {ratio}")


if __name__ == "__main__":
    main()
