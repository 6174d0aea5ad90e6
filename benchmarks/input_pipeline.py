r"""Input-pipeline throughput: weak+strong training samples per second per CPU core.

    python -m benchmarks.input_pipeline        # from the repo root; real NWPU next to the repo, built into a temp dir
    python -m benchmarks.input_pipeline --data-dir DIR --workers 4

One core: the whole pipeline (decode, resize, masks, flips, strong augmentations, prompts,
batching) in the calling process with a single reading thread, so the figure is what one
core delivers. With --workers N it also measures N worker processes. Target: >= 5 images/s
per core at image_size 1024 with 50 instance slots.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from resam_jax.data.pipeline import DataConfig, make_dataset
from resam_jax.data.prepare import prepare

REPO_ROOT = Path(__file__).resolve().parents[1]


def images_per_second(config: DataConfig, num_batches: int, warmup: int) -> float:
    iterator = iter(make_dataset(config, "train", train=True, seed=0, shard_index=0, shard_count=1))
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return num_batches * config.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="TFDS dir with nwpu_vhr10 built; default: build into a temp dir")
    parser.add_argument("--manual-dir", default=os.environ.get("RESAM_NWPU_DIR", REPO_ROOT.parent / "shared/data/NWPU"))
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--max-instances", type=int, default=50)
    parser.add_argument("--num-points", type=int, default=1)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--workers", type=int, default=0, help="also measure this many worker processes")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir or scratch
        prepare("nwpu_vhr10", manual_dir=Path(args.manual_dir), data_dir=Path(data_dir))
        config = DataConfig(
            data_dir=str(data_dir),
            image_size=args.image_size,
            max_instances=args.max_instances,
            num_points=args.num_points,
            batch_size=1,
            read_threads=1,
            prefetch_batches=1,
        )
        result = {
            "image_size": args.image_size,
            "max_instances": args.max_instances,
            "cpu_count": os.cpu_count(),
            "images_per_s_one_core": round(images_per_second(config, args.samples, warmup=3), 2),
        }
        if args.workers:
            parallel = DataConfig(**{**config.__dict__, "worker_count": args.workers, "prefetch_batches": 2})
            rate = images_per_second(parallel, args.samples, warmup=2 * args.workers)
            result[f"images_per_s_{args.workers}_workers"] = round(rate, 2)
            result["images_per_s_per_worker"] = round(rate / args.workers, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
