r"""Pretrains a SAM with full supervision on any prepared TFDS dataset, standing in for Meta's SAM.

    python -m resam_jax.data.prepare --dataset nwpu_vhr10 --manual-dir /work/shared/data/NWPU \
        --data-dir /tmp/tfds_nwpu
    python -m tools.pretrain_sam --data-dir /tmp/tfds_nwpu --source-half first \
        --model-type small --steps 20000 --resume-dir /tmp/pretrain_small \
        --output resam_jax/assets/sam_small_nwpu

Every parameter of sam_config(--model-type) is trained from a random initialisation with the
ground-truth masks of the training images, prompted as SAM is trained: a random set of 1..3
positive and 0..3 negative points per instance, and the GT box jittered by 10% of its side;
the loss is the mean of the two prompts' 20 * focal + dice + IoU-head MSE (docs/method.md 4.3,
IoU target on probabilities). --correction-clicks K and --multimask add the rest of SAM's
recipe (resam_jax/experiments/pretraining.py): K rounds of clicks drawn from the error region,
and the ambiguity-aware three-mask first round; --mask-loss bce trains BCE + dice instead of
20 focal + dice; a run may continue another's checkpoint with a
different recipe, and the record says which steps each trained. Only flips augment the images (strong_probability = 0): the source
model must not see the photometric corruptions a study adapts it to. Pixels are fed as the
published protocol feeds SAM ([0, 1], model.pixel_norm="unit"), so the packaged model runs
that protocol without folding a normalisation into its patch embedding.

--source-half picks the SOURCE images: "first" or "second" half of the training split's
images (the pipeline's data.train_images halves: a fixed seeded permutation of their ids,
resam_jax.data.pipeline.train_image_halves), or "all".

Resumable: with --resume-dir the train state (parameters, Adam moments, step, PRNG key) and the
input pipeline's position are checkpointed there (orbax) every --checkpoint-every-seconds and at
the end, and the same command continues from the latest checkpoint, bit for bit. SIGTERM saves
and stops between steps. The end (or --package-only, which trains nothing and packages the
latest checkpoint) scores box- and point-prompted masks on --eval-split (per-instance IoU, 1
positive + 1 negative point, one draw) and, with --output, writes a checkpoint that
resam_jax.models.sam.load_sam loads, its record (command, steps, time, scores) in sam_checkpoint.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from resam_jax import parallel
from resam_jax.config import base_config
from resam_jax.data import pipeline
from resam_jax.experiments.pretraining import BASE_RECIPE, MASK_WEIGHTS, Recipe, sam_training_loss
from resam_jax.method.train_state import split_model
from resam_jax.models.sam import (
    MODEL_TYPES,
    Sam,
    sam_config,
    save_sam_params,
)
from resam_jax.run import Evaluator
from resam_jax.run.checkpoints import TrainCheckpoints

REPO = Path(__file__).resolve().parents[1]
MAX_POINTS = 3  # prompts hold 1..3 positive and 0..3 negative points
PIXEL_NORM = "unit"  # the published protocol's input (docs/method.md section 9)


@functools.lru_cache(maxsize=4)  # one compilation per model and schedule in a process
def make_pretrain_step(graphdef: nnx.GraphDef, lr: float, steps: int, recipe: Recipe = BASE_RECIPE):
    """Jitted (state, rest, batch) -> (state, loss): one step on the mean of the point- and the
    box-prompted losses (and `recipe`'s correction rounds). `state` = {"params", "opt_state",
    "key", "step"}."""
    optimizer = make_optimizer(lr, steps)

    def loss_fn(params, rest, batch, key):
        model = nnx.merge(graphdef, params, rest)
        return sam_training_loss(model, batch, key, PIXEL_NORM, recipe)

    def step(state, rest, batch):
        key, step_key = jax.random.split(jax.random.wrap_key_data(state["key"]))
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], rest, batch, step_key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        new = {
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "key": jax.random.key_data(key),
            "step": state["step"] + 1,
        }
        return new, loss

    return jax.jit(step, donate_argnums=(0,))


@functools.lru_cache(maxsize=2)  # building a SAM op by op is slow on a busy CPU
def initial_model(config, seed: int) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, parameters, other variables) of a freshly initialised SAM. The other
    variables (the prompt encoder's random Fourier matrix) are not trained and not
    checkpointed: the seed makes them again on resume."""
    model = Sam(config, rngs=nnx.Rngs(seed), pixel_norm=PIXEL_NORM)  # the evaluator's input
    return nnx.split(model, nnx.Param, ...)


def make_optimizer(lr: float, steps: int) -> optax.GradientTransformation:
    warmup = min(250, max(steps // 10, 1))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1), lr / 20)
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=1e-4))


SOURCE_HALVES = {"first": "first_half", "second": "second_half", "all": "all"}


def data_config(args, batch_size: int, num_points: int) -> pipeline.DataConfig:
    return pipeline.DataConfig(
        train_images=SOURCE_HALVES[args.source_half],
        dataset=args.dataset,
        dataset_config=args.dataset_config,
        data_dir=str(Path(args.data_dir).expanduser()),
        image_size=args.image_size,
        tile_size=args.tile_size,
        max_instances=args.max_instances,
        num_points=num_points,
        # Photometric augmentation would teach the source model the corruptions a study
        # adapts it to; only flips.
        strong_probability=0.0,
        host_batch_size=batch_size,
    )


def prompt_scores(model: Sam, data: pipeline.DataConfig, split: str, seed: int) -> dict:
    """Per-instance IoU/F1 of box-prompted and of 1+1 point-prompted masks on `split` (the
    published protocol's metric, one point draw with seed `seed`)."""
    config = base_config()
    config.seed = seed
    config.model.pixel_norm = PIXEL_NORM  # what this script trains with
    config.eval.reduction = "per_instance"
    config.eval.prompt_seeds = 1
    config.data.eval_split = split
    config.train.num_overlays = 0
    data = dataclasses.replace(data, num_points=1)
    mesh = parallel.data_mesh()
    graphdef, lora, frozen = split_model(model)
    scores = {}
    with tempfile.TemporaryDirectory(prefix="pretrain_sam_eval_") as workdir:
        for prompt in ("boxes", "points"):
            config.eval.prompt = prompt
            evaluator = Evaluator(graphdef, config, data, mesh, Path(workdir))
            result = evaluator.scores(
                parallel.replicate(lora, mesh), parallel.replicate(frozen, mesh)
            )
            scores[prompt] = {k: round(float(v), 4) for k, v in result.items() if k in ("iou", "f1", "images")}  # fmt: skip
    return scores


def encoder_overrides(args: argparse.Namespace) -> dict:
    """sam_config overrides for --encoder-width / --encoder-depth (a wider or deeper encoder
    than the model type's: the checkpoint's header records the resulting config)."""
    overrides = {}
    if args.encoder_width is not None:
        if args.encoder_width < 32 or args.encoder_width % 32:
            raise SystemExit(f"--encoder-width={args.encoder_width}: expected a multiple of 32")
        overrides.update(encoder_embed_dim=args.encoder_width, encoder_num_heads=args.encoder_width // 32)  # fmt: skip
    if args.encoder_depth is not None:
        if args.encoder_depth < 2:
            raise SystemExit(f"--encoder-depth={args.encoder_depth}: expected at least 2")
        overrides.update(
            encoder_depth=args.encoder_depth,
            encoder_global_attn_indexes=tuple(range(1, args.encoder_depth, 2)),
        )
    return overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.pretrain_sam", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dataset", default="nwpu_vhr10")
    parser.add_argument("--dataset-config", default="default")
    parser.add_argument("--data-dir", default="~/tensorflow_datasets")
    parser.add_argument("--split", default="train")
    parser.add_argument("--eval-split", default="val", help="scored at the end; '' = none")
    parser.add_argument("--source-half", choices=tuple(SOURCE_HALVES), default="first")
    parser.add_argument("--model-type", choices=MODEL_TYPES, default="small")
    parser.add_argument("--image-size", type=int, default=None, help="default: the model type's")
    parser.add_argument("--encoder-width", type=int, default=None,
                        help="ViT width (heads: width / 32); default: the model type's")  # fmt: skip
    parser.add_argument("--encoder-depth", type=int, default=None,
                        help="ViT blocks, every second one global; default: the model type's")  # fmt: skip
    parser.add_argument("--tile-size", type=int, default=0,
                        help="native-resolution tiles of this side (data.tile_size); 0 = whole images")  # fmt: skip
    parser.add_argument("--max-instances", type=int, default=8,
                        help="instance slots per sample (padding slots cost decoder time)")  # fmt: skip
    parser.add_argument("--correction-clicks", type=int, default=0,
                        help="SAM's iterative training: rounds adding one point from the error region, "
                        "the previous mask as a prompt")  # fmt: skip
    parser.add_argument("--multimask", action="store_true",
                        help="SAM's ambiguity-aware first round (one point, three masks, minimum loss); "
                        "needs --correction-clicks")  # fmt: skip
    parser.add_argument("--mask-loss", choices=sorted(MASK_WEIGHTS), default="focal",
                        help="the mask term of every decode: SAM's 20 focal, or 1 BCE (MedSAM's); "
                        "each + dice + the IoU head's loss")  # fmt: skip
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume-dir", default="", help="orbax checkpoints; resumes if any")
    parser.add_argument("--checkpoint-every-seconds", type=float, default=300.0)
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--stop-after", type=int, default=None,
                        help="train at most this many steps in this run, then checkpoint and stop")  # fmt: skip
    parser.add_argument("--package-only", action="store_true",
                        help="train nothing: score and package the latest checkpoint of --resume-dir")  # fmt: skip
    parser.add_argument("--output", default="", help="checkpoint directory to package into")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", force=True
    )
    run(_parser().parse_args(argv))
    return 0


def run(args: argparse.Namespace) -> dict:
    """Trains (resuming from --resume-dir), scores and packages as the flags say; returns
    {"step": last step, "losses": this run's loss at each of its steps, "scores"}."""
    if args.package_only and not args.resume_dir:
        raise SystemExit("--package-only needs --resume-dir")
    config = sam_config(args.model_type, **encoder_overrides(args))
    try:
        recipe = Recipe(
            correction_clicks=args.correction_clicks,
            multimask=args.multimask,
            mask_loss=args.mask_loss,
        )
    except ValueError as e:
        raise SystemExit(f"--correction-clicks / --multimask: {e}") from None
    if args.image_size is not None:
        config = dataclasses.replace(config, image_size=args.image_size)
    args.image_size = config.image_size
    train_data = data_config(args, args.batch_size, MAX_POINTS)
    rows = pipeline.host_samples(train_data, args.split, train=True, shard_index=0, shard_count=1)
    tiles = pipeline.split_tile_table(train_data, args.split)
    records = rows[:, 0] if tiles is None else np.array([tiles[u].record for u in rows[:, 0]])
    num_images = len(np.unique(records))
    logging.info("%s/%s %s half: %d images, %d samples; SAM %s at %d px", args.dataset,
                 args.split, args.source_half, num_images, len(rows), args.model_type,
                 config.image_size)  # fmt: skip

    graphdef, params, rest = initial_model(config, args.seed)
    params = jax.tree.map(jnp.copy, params)  # the step donates its state
    model = nnx.merge(graphdef, params, rest)
    optimizer = make_optimizer(args.lr, args.steps)
    state = {
        "params": params,
        "opt_state": optimizer.init(params),
        "key": jax.random.key_data(jax.random.key(args.seed)),
        "step": jnp.int32(0),
    }
    dataset = pipeline.make_dataset(train_data, args.split, train=True, seed=args.seed)
    batches = iter(dataset)
    checkpoints = None
    if args.resume_dir:
        checkpoints = TrainCheckpoints(args.resume_dir, keep=2)
        if checkpoints.latest_step() is not None:
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
            )
            state = checkpoints.restore(abstract, batches)
            logging.info("resumed from %s at step %d", args.resume_dir, int(state["step"]))
        elif args.package_only:
            raise SystemExit(f"--package-only: no checkpoint under {args.resume_dir}")

    # Seconds spent training over every run that wrote into --resume-dir (at its checkpoints).
    record_path = Path(args.resume_dir) / "record.json" if args.resume_dir else None
    record = json.loads(record_path.read_text()) if record_path and record_path.is_file() else {}
    seconds_before = float(record.get("train_seconds_total", 0.0))

    # Which recipe trained which steps: a run may continue another's checkpoint with a new one.
    recipes = record.setdefault("recipes", [])
    if not recipes and seconds_before > 0:  # checkpoints of a version before recipes: the base one
        recipes.append({"first_step": 0, "last_step": int(state["step"]), **dataclasses.asdict(Recipe())})  # fmt: skip

    def save():
        checkpoints.save(step, state, batches)
        record.update(train_seconds_total=round(seconds_before + time.perf_counter() - start, 1), step=step)  # fmt: skip
        this_run = {"first_step": first_step, "last_step": step, **dataclasses.asdict(recipe)}
        if recipes and recipes[-1]["first_step"] == first_step:
            recipes[-1] = this_run
        else:
            recipes.append(this_run)
        record_path.write_text(json.dumps(record) + "\n")
        logging.info("checkpoint at step %d", step)

    # Committed to one device either way, so a fresh and a restored state hit the same
    # compiled step.
    state = jax.device_put(state, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    stop = {"now": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    step_fn = make_pretrain_step(graphdef, args.lr, args.steps, recipe)
    step = int(state["step"])
    recent: list[jax.Array] = []
    start = last_save = time.perf_counter()
    first_step = step
    mean_loss = float("nan")
    last = args.steps if args.stop_after is None else min(args.steps, step + args.stop_after)
    losses: list[jax.Array] = []
    while step < last and not args.package_only and not stop["now"]:
        state, loss = step_fn(state, rest, next(batches))
        step += 1
        recent.append(loss)
        losses.append(loss)
        if step % args.log_every == 0 or step == args.steps or step == first_step + 5:
            mean_loss = float(np.mean(jax.device_get(recent)))
            recent.clear()
            elapsed = time.perf_counter() - start
            logging.info("step %d/%d loss %.4f (%.1f s, %.3f steps/s)", step, args.steps,
                         mean_loss, elapsed, (step - first_step) / elapsed)  # fmt: skip
        if checkpoints and time.perf_counter() - last_save > args.checkpoint_every_seconds:
            save()
            last_save = time.perf_counter()
    if checkpoints:
        if step > first_step:
            save()
        checkpoints.close()
    train_seconds = seconds_before + time.perf_counter() - start
    signal.signal(signal.SIGTERM, previous)
    result = {"step": step, "losses": [float(x) for x in jax.device_get(losses)], "scores": {}}
    if stop["now"] or step < args.steps and not args.package_only:
        logging.info("stopped at step %d of %d; the same command resumes", step, args.steps)
        return result

    nnx.update(model, state["params"])
    scores = {}
    if args.eval_split:
        scores = prompt_scores(model, train_data, args.eval_split, args.seed)
        logging.info("step %d %s: %s", step, args.eval_split, json.dumps(scores))
    if args.output:
        package(args, model, config, step, num_images, scores, train_seconds, mean_loss, recipes)
    return {**result, "scores": scores}


def package(args, model, config, step, num_images, scores, train_seconds, final_loss, recipes) -> None:  # fmt: skip
    flat = {
        path: np.asarray(variable.get_value())
        for path, variable in nnx.to_flat_state(nnx.state(model))
    }
    command = [
        "python", "-m", "tools.pretrain_sam", "--dataset", args.dataset, "--dataset-config",
        args.dataset_config, "--data-dir", "DATA_DIR", "--split", args.split, "--source-half",
        args.source_half, "--model-type", args.model_type,
        "--image-size", str(args.image_size), "--tile-size", str(args.tile_size),
        *(["--encoder-width", str(args.encoder_width)] if args.encoder_width else []),
        *(["--encoder-depth", str(args.encoder_depth)] if args.encoder_depth else []),
        "--max-instances", str(args.max_instances),
        *(["--correction-clicks", str(args.correction_clicks)] if args.correction_clicks else []),
        *(["--multimask"] if args.multimask else []),
        *(["--mask-loss", args.mask_loss] if args.mask_loss != "focal" else []),
        "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
        "--seed", str(args.seed), "--resume-dir", "CKPT_DIR", "--output", "OUTPUT",
    ]  # fmt: skip
    save_sam_params(
        args.output,
        flat,
        config,
        {
            "path": "tools/pretrain_sam.py",
            "command": shlex.join(command),
            "seed": args.seed,
            "schedule_steps": args.steps,
            "trained_steps": step,
            "batch_size": args.batch_size,
            "train_data": f"{args.dataset}/{args.dataset_config} {args.split}, {args.source_half} "
            f"half: {num_images} images, flips only"
            + (f", native-resolution tiles of {args.tile_size} px" if args.tile_size else ""),
            "pixel_norm": PIXEL_NORM,
            # Steps trained per recipe (first_step exclusive, last_step inclusive).
            "recipes": recipes,
            "final_loss": None if np.isnan(final_loss) else round(final_loss, 4),
            "train_seconds": round(train_seconds),
            "eval": {
                "split": args.eval_split,
                "metric": "per-instance IoU / F1 (eval.reduction='per_instance'), eval.threshold_on='logits'",
                "box_prompt": scores.get("boxes"),
                "point_prompt_1pos_1neg": scores.get("points"),
            },
        },
    )
    size = sum(v.size for v in flat.values())
    logging.info("wrote %s (%d parameters, step %d)", args.output, size, step)


if __name__ == "__main__":
    sys.exit(main())
