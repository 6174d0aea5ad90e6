"""ReSAM train step: resam-jax against a PyTorch step built as the public ReSAM code builds it.

    python benchmarks/train_step.py                    # vit_b, 1024x1024, batch 1, 8 instances:
                                                       # PyTorch, the defaults, both options off
    python benchmarks/train_step.py --instances 50 --repeats 5
    python benchmarks/train_step.py --side jax --repeats 1 --warmup 0    # one side only
    python benchmarks/train_step.py --variants reference/none chunked/blocks   # jax options
    python benchmarks/train_step.py --side jax --memory-analysis --variants reference/none \
        chunked/none reference/blocks chunked/blocks                      # compile only

--variants lists resam-jax configurations as ATTENTION[:CHUNK]/REMAT (model.attention,
model.attention_chunk_size, model.remat; default: base_config's, then reference/none),
each timed in its own subprocess in the same run. --memory-analysis runs nothing: it compiles
each variant's step and prints XLA's memory analysis (argument, output, temporary bytes) and
cost analysis (FLOPs per step). XLA_FLAGS gets the XLA:CPU scheduler flag the run commands set
(resam_jax.parallel.set_default_xla_flags) unless it names that flag already.

One image per step, N instances each prompted with 1 positive and 1 negative point.

resam-jax: resam_jax.train_step.make_train_step with resam_jax.config.base_config() (mode
"resam", LoRA from block 6 as for NWPU): the weak view is encoded once for Refine and Requery,
the strong view once with gradients through LoRA.

PyTorch: segment-anything's Sam with the public code's LoRA (rank 4 on q and v of the fused qkv
of blocks >= 6, only LoRA trainable, torch Adam with weight decay 1e-4) and the public code's step:
the weak view encoded without gradients for Refine, AGAIN without gradients for Requery, the
strong view with gradients; focal x20 + dice + IoU-MSE + SSA, backward, Adam step. The losses
are vectorised over instances and every instance keeps its slot (the public code loops in
Python and drops empty ones), so the baseline does the same work per step whatever the masks.

Both models carry random weights (speed does not depend on them). Each side runs in its own
subprocess so that its peak resident memory (ru_maxrss, compilation included) is its own.
Prints wall and CPU seconds per step (CPU time, summed over the process's threads, is the less
load-sensitive of the two on a shared machine), compile seconds, peak RSS, the load average
around each side, and the speed-up torch / jax. The PyTorch side is segment-anything's registry
model, so --image-size other than the model's own runs with --side jax only.

Each timed jax variant also prints its model FLOP utilisation: MFU = model FLOPs per step
(benchmarks/plan.py's model_flops: the step with reference attention and no remat) / median
seconds per step / the device's peak FLOP/s (benchmarks/peak_flops.py: the datasheet figure of
a known accelerator; on a CPU the measured float32 matmul rate of this machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import ml_collections

    from resam_jax.model.architecture import SamConfig

if not __package__:  # run as a script (python benchmarks/train_step.py): benchmarks.* importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULT_PREFIX = "RESULT "
# LoRA from encoder block 6, as configs/nwpu.py (the public config_nwpu) and base_config.
LORA_START_LAYER = 6
SIDES = ("torch", "jax")
# The strong view's photometric augmentation does not change the work; a fixed seed keeps the
# batch identical for both sides.
BATCH_SEED = 0


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


def synthetic_batch(image_size: int, instances: int, seed: int) -> dict[str, np.ndarray]:
    """One image (B = 1) following the batch contract: a 4:3 image resized to the longest side
    and padded centred, `instances` non-overlapping rectangles, 1 positive + 1 negative point."""
    from resam_jax.data.photometric import strong_augment

    rng = np.random.default_rng(seed)
    height, width = image_size * 3 // 4, image_size
    top = (image_size - height) // 2
    content = np.clip(
        rng.normal(110, 25, (height, width, 3)) + np.linspace(0, 40, width)[None, :, None], 0, 255
    ).astype(np.uint8)
    grid = int(np.ceil(np.sqrt(instances)))
    cell_h, cell_w = height // grid, width // grid
    masks = np.zeros((instances, image_size, image_size), bool)
    boxes = np.zeros((instances, 4), np.float32)
    points = np.zeros((instances, 2, 2), np.float32)
    for i in range(instances):
        row, col = divmod(i, grid)
        h, w = (
            rng.integers(cell_h // 4, cell_h * 3 // 4),
            rng.integers(cell_w // 4, cell_w * 3 // 4),
        )
        y0, x0 = (
            row * cell_h + rng.integers(0, cell_h - h),
            col * cell_w + rng.integers(0, cell_w - w),
        )
        content[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
        y0 += top
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
        boxes[i] = (x0, y0, x0 + w - 1, y0 + h - 1)
        points[i, 0] = (rng.integers(x0, x0 + w), rng.integers(y0, y0 + h))
        while True:  # negative: anywhere in the content outside this instance
            x, y = rng.integers(0, width), rng.integers(top, top + height)
            if not masks[i, y, x]:
                points[i, 1] = (x, y)
                break
    weak = np.zeros((image_size, image_size, 3), np.uint8)
    strong = np.zeros_like(weak)
    weak[top : top + height] = content
    strong[top : top + height] = strong_augment(content, rng, probability=1.0)
    content_mask = np.zeros((image_size, image_size), bool)
    content_mask[top : top + height] = True
    sample = {
        "weak_image": weak,
        "strong_image": strong,
        "content_mask": content_mask,
        "masks": masks,
        "boxes": boxes,
        "points": points,
        "point_labels": np.tile(np.array([1, 0], np.int32), (instances, 1)),
        "instance_valid": np.ones((instances,), bool),
        "image_id": np.int32(0),
        "original_size": np.array([height, width], np.int32),
        "resized_size": np.array([height, width], np.int32),
        "pad_offset": np.array([top, 0], np.int32),
    }
    return {key: np.asarray(value)[None] for key, value in sample.items()}


# ----------------------------------------------------------------------------------- resam-jax


@dataclasses.dataclass(frozen=True)
class JaxStep:
    """One resam-jax configuration's ReSAM train step, built on abstract shapes (nothing is
    allocated): what the timed run, --memory-analysis and benchmarks/plan.py compile."""

    name: str  # for the tables, e.g. "resam-jax (float32, chunked 128 attention, remat blocks)"
    config: ml_collections.ConfigDict  # base_config() with mode "resam" and these options
    sam: SamConfig
    step: Callable  # jax.jit(make_train_step(...)) donating the state: (state, frozen, batch)
    state: Any  # the TrainState at step 0, as jax.ShapeDtypeStruct leaves
    frozen: Any  # the frozen SAM variables, as jax.ShapeDtypeStruct leaves


def build_jax_step(
    model_type: str,
    image_size: int,
    attention: str,
    remat: str,
    chunk_size: int | None = None,
    dtype: str = "float32",
    lora_start_layer: int = LORA_START_LAYER,
    instance_chunk_size: int | None = None,
) -> JaxStep:
    """The train step of resam_jax.config.base_config() in mode "resam" (epoch 1) with these
    model options (chunk_size, instance_chunk_size None: base_config's), on abstract shapes."""
    import jax
    from flax import nnx

    from resam_jax.config import base_config
    from resam_jax.model import Sam, sam_config
    from resam_jax.train_state import create_train_state, split_model
    from resam_jax.train_step import make_train_step

    config = base_config()
    config.method.mode = "resam"
    config.model.update(
        lora_start_layer=lora_start_layer, attention=attention, remat=remat, dtype=dtype
    )
    if chunk_size is not None:
        config.model.attention_chunk_size = chunk_size
    if instance_chunk_size is not None:
        config.train.instance_chunk_size = instance_chunk_size
    sam = sam_config(
        model_type,
        image_size=image_size,
        lora_rank=config.model.lora_rank,
        lora_start_layer=config.model.lora_start_layer,
        dtype=config.model.dtype,
        attention=config.model.attention,
        attention_chunk_size=config.model.attention_chunk_size,
        remat=config.model.remat,
    )
    if attention == "chunked":
        attention = f"chunked {config.model.attention_chunk_size}"
    graphdef, lora, frozen = split_model(nnx.eval_shape(lambda: Sam(sam, rngs=nnx.Rngs(0))))
    state = jax.eval_shape(
        lambda lora: create_train_state(lora, sam.prompt_embed_dim, config), lora
    )
    step = jax.jit(
        make_train_step(graphdef, config, steps_per_epoch=10**6), donate_argnums=0
    )  # epoch 1
    return JaxStep(
        name=f"resam-jax ({dtype}, {attention} attention, remat {remat})",
        config=config,
        sam=sam,
        step=step,
        state=state,
        frozen=frozen,
    )


def abstract_batch(image_size: int, instances: int, batch: int) -> dict:
    """The shapes and dtypes of `batch` images of synthetic_batch (jax.ShapeDtypeStruct)."""
    import jax

    one = synthetic_batch(image_size, instances, BATCH_SEED)
    return {k: jax.ShapeDtypeStruct((batch, *v.shape[1:]), v.dtype) for k, v in one.items()}


def run_jax(args: argparse.Namespace) -> dict:
    import jax
    from flax import nnx

    from resam_jax.model import Sam
    from resam_jax.train_state import create_train_state, split_model

    attention, remat = args.variant.split("/")
    attention, _, chunk = attention.partition(":")
    jax_step = build_jax_step(
        args.model_type, args.image_size, attention, remat, int(chunk) if chunk else None
    )
    config, sam, train_step, name = jax_step.config, jax_step.sam, jax_step.step, jax_step.name
    if args.memory_analysis:
        from benchmarks.plan import compiled_analysis

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
    _, lora, frozen = split_model(Sam(sam, rngs=nnx.Rngs(config.seed)))
    state = create_train_state(lora, sam.prompt_embed_dim, config)
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
    from benchmarks.peak_flops import peak_flops
    from benchmarks.plan import model_flops

    peak, peak_source = peak_flops(config.model.dtype)
    return {
        "name": name,
        "samples": samples,
        "compile_s": compile_s,
        "notes": {
            key: float(metrics[key])
            for key in ("loss", "skipped", "valid_instances", "pseudo_label_kept_fraction")
        },
        "model_flops": model_flops(
            args.model_type,
            args.image_size,
            args.instances,
            1,
            config.model.dtype,
            config.model.lora_start_layer,
        ),  # fmt: skip
        "peak_flops": peak,
        "peak_source": peak_source,
    }


# ------------------------------------------------------------------------ PyTorch (public code)


def run_torch(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.functional as F
    from segment_anything import sam_model_registry

    from resam_jax.model import sam_config

    rank, start_layer = 4, 6
    refine_threshold, focal_alpha, focal_gamma = 0.3, 0.8, 2.0
    ssa_weight = 4.0 / (1.0 + np.exp(-(1 - (10 + 1) / 2)))  # beta(epoch 1 of 10)

    class LoRAQkv(torch.nn.Module):
        """The public code's _LoRA_qkv: low-rank updates added to the q and v thirds of qkv."""

        def __init__(self, qkv: torch.nn.Linear):
            super().__init__()
            self.qkv, self.dim = qkv, qkv.in_features
            self.linear_a_q = torch.nn.Linear(self.dim, rank, bias=False)
            self.linear_b_q = torch.nn.Linear(rank, self.dim, bias=False)
            self.linear_a_v = torch.nn.Linear(self.dim, rank, bias=False)
            self.linear_b_v = torch.nn.Linear(rank, self.dim, bias=False)
            for b in (self.linear_b_q, self.linear_b_v):
                torch.nn.init.zeros_(b.weight)  # A keeps nn.Linear's kaiming_uniform(a=sqrt(5))

        def forward(self, x):
            qkv = self.qkv(x)
            qkv[..., : self.dim] += self.linear_b_q(self.linear_a_q(x))
            qkv[..., -self.dim :] += self.linear_b_v(self.linear_a_v(x))
            return qkv

    if args.image_size != sam_config(args.model_type).image_size:
        raise SystemExit("the PyTorch side builds segment-anything's registry model: "
                         "use the model's own --image-size or --side jax")  # fmt: skip
    torch.manual_seed(0)
    sam = sam_model_registry[args.model_type]()
    for p in sam.parameters():
        p.requires_grad_(False)
    for block in sam.image_encoder.blocks[start_layer:]:
        block.attn.qkv = LoRAQkv(block.attn.qkv)
    sam.train()
    trainable = [p for n, p in sam.named_parameters() if "linear_" in n]
    optimizer = torch.optim.Adam(trainable, lr=5e-4, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / 250)
    )

    batch = synthetic_batch(args.image_size, args.instances, BATCH_SEED)
    # The public code feeds [0, 1] RGB, NCHW, straight into the image encoder.
    weak = torch.from_numpy(batch["weak_image"]).permute(0, 3, 1, 2).float().div(255)
    strong = torch.from_numpy(batch["strong_image"]).permute(0, 3, 1, 2).float().div(255)
    points = torch.from_numpy(batch["points"][0])  # [N, 2, 2]
    labels = torch.from_numpy(batch["point_labels"][0])  # [N, 2]
    instance_valid = torch.from_numpy(batch["instance_valid"][0])
    size = args.image_size
    log(f"torch {torch.__version__}, {torch.get_num_threads()} threads: model and batch ready")

    def decode(embedding, points=None, boxes=None):
        """The public Model.decode: one mask-decoder call for all instances of the image."""
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, iou = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        logits = F.interpolate(low_res, (size, size), mode="bilinear", align_corners=False)
        return logits[:, 0], iou[:, 0]

    def mask_boxes(masks):
        columns, rows = masks.any(dim=1), masks.any(dim=2)  # [N, W], [N, H]
        last = lambda f: f.shape[-1] - 1 - f.flip(-1).int().argmax(-1)  # noqa: E731
        boxes = torch.stack(
            [columns.int().argmax(-1), rows.int().argmax(-1), last(columns), last(rows)], -1
        ).float()
        return boxes, columns.any(-1)

    def box_features(embedding, boxes, stride=16):
        """The public get_bbox_feature, one box at a time, L2-normalised."""
        grid = embedding.shape[-1]
        features = []
        for x1, y1, x2, y2 in boxes.tolist():
            region = embedding[0, :, max(int(y1 / stride), 0) : min(int((y2 + stride - 1) / stride), grid),
                               max(int(x1 / stride), 0) : min(int((x2 + stride - 1) / stride), grid)]  # fmt: skip
            features.append((region if region.numel() else embedding[0]).mean(dim=(1, 2)))
        return F.normalize(torch.stack(features), dim=1)

    def masked_mean(values, valid):
        return torch.where(valid, values, 0).sum() / valid.sum().clamp(min=1)

    def train_step():
        with torch.no_grad():
            # Refine: point prompts on the weak view, entropy filter, overlap removal.
            logits, _ = decode(sam.image_encoder(weak), points=(points, labels))
            p = torch.sigmoid(logits).clamp(1e-6, 1 - 1e-6)
            entropy = -(p * torch.log(p) + (1 - p) * torch.log1p(-p))
            confident = (p * (1 - entropy) > refine_threshold) & instance_valid[:, None, None]
            refined = confident & ~(confident.sum(0) > 1)
            boxes, nonempty = mask_boxes(refined)
            valid = instance_valid & nonempty
            # Requery: the public code encodes the weak view a second time.
            weak_embedding = sam.image_encoder(weak)
            targets = (decode(weak_embedding, boxes=boxes)[0] > 0).float()
            weak_features = box_features(weak_embedding, boxes)
        # Student on the strong view, gradients through LoRA.
        embedding = sam.image_encoder(strong)
        logits, iou_predictions = decode(embedding, points=(points, labels))
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        focal = (focal_alpha * (1 - torch.exp(-bce)) ** focal_gamma * bce).mean(dim=(1, 2))
        probs = torch.sigmoid(logits)
        dice = 1 - (2 * (probs * targets).sum((1, 2)) + 1) / (
            probs.sum((1, 2)) + targets.sum((1, 2)) + 1
        )
        with torch.no_grad():
            predicted = logits >= 0
            actual_iou = (predicted & (targets > 0)).sum((1, 2)) / (
                (predicted | (targets > 0)).sum((1, 2)) + 1e-7
            )
        iou_loss = (iou_predictions - actual_iou) ** 2
        strong_features = box_features(embedding, boxes)
        ssa = (1 - (strong_features * weak_features).sum(1)).mean()
        loss = (20 * masked_mean(focal, valid) + masked_mean(dice, valid)
                + masked_mean(iou_loss, valid) + ssa_weight * ssa)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        notes.update(loss=loss.item(), valid_instances=int(valid.sum()))

    notes = {}
    samples = timed_steps(train_step, args.repeats, args.warmup)
    return {
        "name": f"PyTorch public-code step (torch {torch.__version__}, float32)",
        "samples": samples,
        "compile_s": None,
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------- main


def run_side(args: argparse.Namespace, side: str, variant: str) -> dict:
    """Runs one side (a jax variant) in a fresh subprocess and returns its result with its
    peak RSS."""
    command = [sys.executable, os.path.abspath(__file__), "--side", side,
               "--model-type", args.model_type, "--instances", str(args.instances),
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
        f"\nReSAM train step, SAM {args.model_type}, {args.image_size}x{args.image_size}, batch 1, "
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
        f"\nReSAM train step, SAM {args.model_type}, {args.image_size}x{args.image_size}, batch 1, "
        f"{args.instances} instances x (1 positive + 1 negative point); median of {args.repeats} "
        f"after {args.warmup} warm-up step(s); {os.cpu_count()} CPUs"
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
                  f"= {r['model_flops'] / 1e12:.3g} TFLOP per step (model FLOPs, benchmarks/plan.py) "
                  f"/ {median(r, 'wall'):.2f} s / peak {r['peak_flops'] / 1e12:.3g} TFLOP/s "
                  f"({r['peak_source']})")  # fmt: skip
    for r in results:
        wall = ", ".join(f"{s:.1f}" for s in r["samples"]["wall"])
        cpu = ", ".join(f"{s:.1f}" for s in r["samples"]["cpu"])
        load = " -> ".join(f"{x:.2f}" for x in r["load_average"])
        notes = ", ".join(f"{k}={v:g}" for k, v in r["notes"].items())
        print(f"  {r['side']}: wall [{wall}] s, CPU [{cpu}] s, load average {load}; {notes}")


def default_variant() -> str:
    """The training defaults (resam_jax.config.base_config) as ATTENTION:CHUNK/REMAT."""
    from resam_jax.config import base_config

    model = base_config().model
    return f"{model.attention}:{model.attention_chunk_size}/{model.remat}"


def main() -> None:
    from resam_jax.parallel import set_default_xla_flags

    set_default_xla_flags()  # as the run commands do; the child processes inherit it
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="vit_b", choices=("vit_b", "vit_l", "vit_h"))
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
    args = parser.parse_args()
    if args.variants is None:
        args.variants = [default_variant(), "reference/none"]
    if args.image_size is None:
        from resam_jax.model import sam_config

        args.image_size = sam_config(args.model_type).image_size

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
    for side in sides:
        for variant in args.variants if side == "jax" else args.variants[:1]:
            results.append(run_side(args, side, variant))
    (print_analysis if args.memory_analysis else print_table)(args, results)


if __name__ == "__main__":
    main()
