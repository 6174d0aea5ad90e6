r"""Input-pipeline throughput: weak+strong training samples per second per CPU core.

    python -m benchmarks.input_pipeline        # from the repo root; real NWPU next to the repo, built into a temp dir
    python -m benchmarks.input_pipeline --data-dir DIR --workers 4

The whole pipeline (decode, resize, masks, flips, strong augmentations, prompts, batching,
dense masks) runs in this process with one reading thread; images per CPU second of that
process is the per-core figure, robust to other load on the machine. With --workers N it
also measures the wall-clock rate of N worker processes. Target: >= 5 images/s per core at
image_size 1024 with 50 instance slots.
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


def throughput(config: DataConfig, num_batches: int, warmup: int) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU second of this process and its threads)."""
    iterator = iter(make_dataset(config, "train", train=True, seed=0, shard_index=0, shard_count=1))
    for _ in range(warmup):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(num_batches):
        next(iterator)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    images = num_batches * config.host_batch_size
    return images / wall, images / cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-dir", help="TFDS dir with nwpu_vhr10 built; default: build into a temp dir"
    )
    parser.add_argument(
        "--manual-dir",
        default=os.environ.get("RESAM_NWPU_DIR", REPO_ROOT.parent / "shared/data/NWPU"),
    )
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--max-instances", type=int, default=50)
    parser.add_argument("--num-points", type=int, default=1)
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument(
        "--workers", type=int, default=0, help="also measure this many worker processes"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir or scratch
        prepare("nwpu_vhr10", manual_dir=Path(args.manual_dir), data_dir=Path(data_dir))
        config = DataConfig(
            data_dir=str(data_dir),
            image_size=args.image_size,
            max_instances=args.max_instances,
            num_points=args.num_points,
            host_batch_size=1,
            read_threads=1,
            prefetch_batches=1,
        )
        wall_rate, cpu_rate = throughput(config, args.samples, warmup=3)
        result = {
            "image_size": args.image_size,
            "max_instances": args.max_instances,
            "cpu_count": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            # One process, one reading thread: on a busy machine the wall-clock rate is lower
            # than what a core delivers; images per CPU second is the per-core figure.
            "images_per_s_one_process": round(wall_rate, 2),
            "images_per_cpu_s": round(cpu_rate, 2),
        }
        if args.workers:
            parallel = DataConfig(
                **{**config.__dict__, "worker_count": args.workers, "prefetch_batches": 2}
            )
            rate, _ = throughput(parallel, args.samples, warmup=2 * args.workers)
            result[f"images_per_s_{args.workers}_workers"] = round(rate, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
