r"""Pretrains the tiny SAM that the demo ships with, standing in for Meta's pretrained SAM.

    python tools/pretrain_tiny_sam.py            # writes resam_jax/assets/sam_tiny_demo/

The real workflow starts from SAM pretrained on natural images and adapts it to remote sensing
with points only. The demo cannot download SAM, and a randomly initialised SAM gives ReSAM
nothing to refine, so this script makes the "natural images" half: it trains every parameter of
sam_config("tiny", image_size=128) with full supervision (GT masks) on synthetic scenes drawn in
the clean "source" style (resam_jax.data.synthetic), prompted by random point sets and jittered
GT boxes, as SAM is prompted during its own training. The demo then adapts it to the speckled,
low-contrast "target" style with ReSAM.

It ends by scoring point-prompted masks (1 positive + 1 negative point, the demo's evaluation)
on held-out images of both styles: the gap between them is what the demo sets out to close.
Deterministic for a given --seed up to floating-point reduction order; about 10 minutes on two
CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx

from resam_jax import parallel
from resam_jax.config import base_config
from resam_jax.data import pipeline
from resam_jax.data.prepare import prepare
from resam_jax.data.synthetic import write_coco_dataset
from resam_jax.experiments.pretraining import sam_training_loss
from resam_jax.method.train_state import split_model
from resam_jax.models.sam import Sam, sam_config, save_sam_params
from resam_jax.run import Evaluator

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "resam_jax" / "assets" / "sam_tiny_demo"

IMAGE_SIZE = 128  # the demo's image size; a SAM's positional embedding fixes it
MAX_INSTANCES = 8  # the synthetic generator draws at most 8 objects per image
MAX_POINTS = 3  # prompts hold 1..3 positive and 0..3 negative points


def _write_dataset(root: Path, name: str, style: str, num_train: int, num_val: int, seed: int):
    """A synthetic dataset of one style, prepared for the input pipeline; its DataConfig."""
    manual_dir = write_coco_dataset(
        root / name, num_train=num_train, num_val=num_val, image_size=160, seed=seed, style=style
    )
    splits = {"train": "annotations/train.json", "val": "annotations/val.json"}
    prepare("coco_instances", config=name, data_dir=root / "tfds", manual_dir=manual_dir, annotations=splits)  # fmt: skip
    return pipeline.DataConfig(
        dataset="coco_instances",
        dataset_config=name,
        data_dir=str(root / "tfds"),
        image_size=IMAGE_SIZE,
        max_instances=MAX_INSTANCES,
        num_points=MAX_POINTS,
        # Photometric augmentation would teach the source model the target's look; only flips.
        strong_probability=0.0,
    )


def make_pretrain_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation):
    """Jitted (params, opt_state, rest, batch, key) -> (params, opt_state, loss): one Adam step
    on the mean of the point-prompted and the box-prompted losses."""

    def loss_fn(params, rest, batch, key):
        return sam_training_loss(nnx.merge(graphdef, params, rest), batch, key, "sam")

    def step(params, opt_state, rest, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def point_prompt_scores(model: Sam, data_config: pipeline.DataConfig, workdir: Path) -> dict:
    """The demo's Direct SAM evaluation (1 positive + 1 negative point per instance, fixed
    seed) of `model` on the val split of `data_config`."""
    config = base_config()
    config.model.pixel_norm = "sam"  # what this script trains with
    config.train.num_overlays = 0
    data_config = dataclasses.replace(data_config, num_points=1)
    mesh = parallel.data_mesh()
    graphdef, lora, frozen = split_model(model)
    evaluator = Evaluator(graphdef, config, data_config, mesh, workdir)
    return evaluator.scores(parallel.replicate(lora, mesh), parallel.replicate(frozen, mesh))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/pretrain_tiny_sam.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train-images", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True
    )

    with tempfile.TemporaryDirectory(prefix="pretrain_tiny_sam_") as tmp:
        root = Path(tmp)
        source = _write_dataset(root, "source", "source", args.train_images, 32, args.seed)
        # Another seed: the target scenes are not the source scenes recoloured.
        target = _write_dataset(root, "target", "target", 1, 32, args.seed + 1)
        source = dataclasses.replace(source, host_batch_size=args.batch_size)

        config = sam_config("tiny", image_size=IMAGE_SIZE)
        model = Sam(config, rngs=nnx.Rngs(args.seed))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        warmup = min(100, args.steps // 10)
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, args.lr, warmup, args.steps, args.lr / 20
        )
        optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
        opt_state = optimizer.init(params)
        step_fn = make_pretrain_step(graphdef, optimizer)
        batches = iter(pipeline.make_dataset(source, "train", train=True, seed=args.seed, shard_index=0, shard_count=1))  # fmt: skip
        key = jax.random.key(args.seed)
        recent: list[jax.Array] = []
        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            key, step_key = jax.random.split(key)
            params, opt_state, loss = step_fn(params, opt_state, rest, next(batches), step_key)
            recent.append(loss)
            if step % 100 == 0 or step == args.steps or step == 10:
                mean_loss = float(np.mean(jax.device_get(recent)))
                recent.clear()
                elapsed = time.perf_counter() - start
                logging.info("step %d/%d loss %.4f (%.0f s)", step, args.steps, mean_loss, elapsed)
        train_seconds = time.perf_counter() - start

        nnx.update(model, params)
        quality = {
            style: point_prompt_scores(model, data_config, root / "eval")
            for style, data_config in (("source", source), ("target", target))
        }

    flat = {
        path: np.asarray(variable.get_value())
        for path, variable in nnx.to_flat_state(nnx.state(model))
    }
    save_sam_params(
        args.output,
        flat,
        config,
        {
            "path": "tools/pretrain_tiny_sam.py",
            "command": f"python tools/pretrain_tiny_sam.py --steps {args.steps} --batch-size "
            f"{args.batch_size} --lr {args.lr} --train-images {args.train_images} --seed {args.seed}",
            "seed": args.seed,
            "steps": args.steps,
            "final_loss": round(mean_loss, 4),
            "train_seconds": round(train_seconds),
            "train_data": f"{args.train_images} synthetic images, style 'source'",
            "point_prompt_iou": {style: round(s["iou"], 4) for style, s in quality.items()},
        },
    )
    print(f"wrote {args.output} ({sum(v.size for v in flat.values())} parameters)")
    print("point-prompted masks (1 positive + 1 negative point), held-out images:")
    for style, scores in quality.items():
        print(f"  {style:6s}  " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
