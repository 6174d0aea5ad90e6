"""Accelerator readiness check (issue 24): SAM ViT-B at 1024 on one accelerator, one table, JSON.

    python benchmarks/device_check.py                      # ViT-B, 1024, jax.devices()[0]
    python benchmarks/device_check.py --smoke              # the same code path, CPU, tiny SAM
    bash benchmarks/device_wheels.sh run                   # bare GPU machine: carried wheels, then this

Parts, in this order, each a group of rows of one table (also written as JSON, --json):

1. parity: segment-anything (PyTorch) and resam-jax on the same device with the same weights
   (segment-anything's random initialisation, every tensor perturbed as tests/sam_reference.py
   does, converted with resam_jax.models.sam.params.torch_to_flax). float32 at the highest
   matmul precision on both sides (TF32 off): the image embedding's and the low-res mask
   logits' max |difference| relative to the reference's max |value|, per attention
   implementation. bfloat16 (model.dtype, default precision): agreement of the low-res masks
   with the float32 reference's at logit 0 and at each instance's median logit, as
   tests/test_bfloat16_full_size.py (at least 99%); PyTorch autocast bfloat16 likewise.
2. step: the ReSAM train step (benchmarks/torch_step.py, the public code's, float32 and
   autocast bfloat16; benchmarks/jax_step.py, resam-jax's, attention x remat x dtype), at 8 and
   50 instances: seconds per step, compile seconds, peak memory, MFU. Both models' mask logits
   are scaled (benchmarks.jax_step.MASK_LOGIT_SCALE) so that every timed step TRAINS; each
   step asserts it (valid instances > 0, not skipped), a row that does not says so.
3. encoder: the image-encoder forward, per attention x dtype, and segment-anything's (float32,
   autocast bfloat16): seconds per image, peak memory, MFU. Last, with the
   part of the budget kept for them (encoder_reserve_s).

Peak memory: PyTorch's max_memory_allocated (reset per row); resam-jax's train step runs in a
process of its own per row, whose peak_bytes_in_use is the row's; the resam-jax encoder rows
give XLA's compiled memory analysis (arguments + outputs + temporaries - aliased). On a CPU
(--smoke) the processes' peak RSS stands in. MFU = model FLOPs (XLA's cost analysis of the
lowered program with reference attention and no remat, benchmarks/jax_step.model_flops) /
median seconds / the datasheet peak of benchmarks/peak_flops.py (dtype float32: TF32, JAX's
default precision on NVIDIA GPUs; the PyTorch float32 rows run at PyTorch's default, TF32 off
for matmuls, so their MFU against the TF32 peak is what the public code gets).

Budget: the run stops starting rows once --budget-s (default 420 s) is spent, and the table
says which rows were not run; the resam-jax step variants run in priority order (the defaults,
then dot_product bfloat16, ...), each with a time limit. The whole command fits 8 minutes on
one H100 with its compile times. XLA_PYTHON_CLIENT_PREALLOCATE=false so that JAX and PyTorch
share the device.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
if not __package__:  # run as a script: benchmarks.* importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.jax_step import (
    BATCH_SEED,
    StepDoesNotTrain,
    assert_trains,
    build_jax_step,
    concrete_state,
    default_lora_start_layer,
    memory_and_cost,
    model_flops,
    synthetic_batch,
)
from benchmarks.peak_flops import peak_flops

RESULT_PREFIX = "RESULT "
GIB = 2**30
MIN_AGREEMENT = 0.99
MAX_F32_RELATIVE = 1e-3  # float32 at the highest precision: the max |diff| / max |reference|


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one run measures."""

    model_type: str
    image_size: int
    instances: tuple[int, ...]
    parity_attentions: tuple[str, ...]  # float32 highest and bfloat16, per implementation
    encoder_variants: tuple[tuple[str, str], ...]  # (attention, dtype)
    torch_dtypes: tuple[str, ...]  # segment-anything's encoder: "float32", "bfloat16" (autocast)
    torch_step_dtypes: tuple[str, ...]  # the public step, likewise
    step_variants: tuple[tuple[int, str, str, str], ...]  # (instances, attention, remat, dtype)
    repeats: int
    warmup: int
    budget_s: float
    encoder_reserve_s: float  # of the budget, kept for the encoder rows (run last)


ATTENTIONS = ("reference", "chunked", "dot_product")
DTYPES = ("float32", "bfloat16")


def full_step_variants() -> tuple[tuple[int, str, str, str], ...]:
    """Every attention x remat x dtype at 8 and 50 instances, the most informative first: the
    defaults, the cuDNN candidate (dot_product, bfloat16), the options one at a time."""
    first = [
        (8, "chunked", "blocks", "float32"),
        (50, "chunked", "blocks", "float32"),
        (8, "dot_product", "none", "bfloat16"),
        (50, "dot_product", "none", "bfloat16"),
        (8, "chunked", "blocks", "bfloat16"),
        (50, "chunked", "blocks", "bfloat16"),
        (8, "reference", "none", "float32"),
        (8, "dot_product", "none", "float32"),
        (8, "chunked", "none", "bfloat16"),
        (8, "dot_product", "blocks", "bfloat16"),
    ]
    rest = [
        (n, a, r, d)
        for n in (8, 50)
        for d in DTYPES
        for a in ATTENTIONS
        for r in ("none", "blocks")
        if (n, a, r, d) not in first
    ]
    return tuple(first + rest)


FULL = Plan(
    model_type="vit_b",
    image_size=1024,
    instances=(8, 50),
    parity_attentions=ATTENTIONS,
    encoder_variants=tuple((a, d) for d in DTYPES for a in ATTENTIONS),
    torch_dtypes=DTYPES,
    torch_step_dtypes=DTYPES,
    step_variants=full_step_variants(),
    repeats=3,
    warmup=1,
    budget_s=420.0,
    encoder_reserve_s=90.0,
)
# The same code path at the tiny SAM's size, a row of each kind (the public step's bfloat16 row
# runs its float32 code under autocast): under 2 minutes on a CPU. No budget: every row runs.
SMOKE = Plan(
    model_type="tiny",
    image_size=256,
    instances=(4,),
    parity_attentions=("dot_product",),
    encoder_variants=(("dot_product", "bfloat16"),),
    torch_dtypes=DTYPES,
    torch_step_dtypes=("bfloat16",),
    step_variants=((4, "reference", "none", "bfloat16"),),  # the quickest step to compile
    repeats=1,
    warmup=0,
    budget_s=3600.0,
    encoder_reserve_s=0.0,
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def median_seconds(fn: Callable[[], None], repeats: int, warmup: int) -> tuple[float, list]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def jax_peak_gib() -> tuple[float, str]:
    """This process's peak device memory (peak_bytes_in_use), or its peak RSS on a CPU."""
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / GIB, "device peak of the row's process"
    return rss_gib(), "peak RSS of the row's process"


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def torch_peak_gib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else None


def torch_reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@contextlib.contextmanager
def torch_float32_exact():
    """TF32 off for matmuls and convolutions, as the highest JAX precision."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@functools.cache
def device_peak(dtype: str) -> float:
    """benchmarks.peak_flops.peak_flops, measured once per process on a CPU."""
    return peak_flops(dtype)[0]


def mfu(flops: float | None, seconds: float, dtype: str) -> float | None:
    if not flops or not seconds:
        return None
    return flops / seconds / device_peak(dtype)


# ---------------------------------------------------------------------------- parity, encoder


def agreement(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """Share of mask pixels on the same side of logit 0, and of each instance's median
    reference logit (where a low-precision error moves the most pixels across)."""
    median = np.median(reference, axis=(-2, -1), keepdims=True)
    return float(np.mean((logits > 0) == (reference > 0))), float(
        np.mean((logits > median) == (reference > median))
    )


@dataclasses.dataclass
class Reference:
    """segment-anything's model on the device and what resam-jax needs to run its weights."""

    plan: Plan
    torch_model: object  # segment_anything Sam, eval mode, on `device`
    device: str
    params: dict  # its weights as resam-jax's Flax paths
    pixels: np.ndarray  # normalised weak view [1, S, S, 3]
    points: np.ndarray  # [1, N, 2, 2]
    labels: np.ndarray  # [1, N, 2]

    def jax_model(self, attention: str, dtype: str):
        """(state, forward(state, images, points, labels) -> (embedding, low-res logits [N, h,
        w]), encode(state, images) -> embedding) of the same weights."""
        from flax import nnx

        from resam_jax.models.sam import sam_config
        from resam_jax.models.sam.checkpoint import sam_from_params

        config = sam_config(
            self.plan.model_type, image_size=self.plan.image_size, attention=attention, dtype=dtype
        )
        graphdef, state = nnx.split(sam_from_params(config, self.params))

        def forward(state, images, points, labels):
            model = nnx.merge(graphdef, state)
            embedding = model.encode(images)
            logits, _ = model.decode(embedding, points=points, point_labels=labels)
            return embedding, logits[0, :, 0]

        def encode(state, images):
            return nnx.merge(graphdef, state).encode(images)

        return state, forward, encode

    def torch_forward(self):
        """(embedding NCHW, low-res logits [N, h, w]) of segment-anything, float32 outputs."""
        import torch

        x = torch.from_numpy(self.pixels).permute(0, 3, 1, 2).contiguous().to(self.device)
        prompt = tuple(torch.from_numpy(a[0]).to(self.device) for a in (self.points, self.labels))
        sam = self.torch_model
        embedding = sam.image_encoder(x)
        sparse, dense = sam.prompt_encoder(points=prompt, boxes=None, masks=None)
        low_res, _ = sam.mask_decoder(
            image_embeddings=embedding,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return embedding.float(), low_res[:, 0].float()


def build_reference(plan: Plan) -> Reference:
    import jax.numpy as jnp

    from benchmarks.torch_step import perturb_, torch_sam
    from resam_jax.models.sam import normalize_pixels, sam_config
    from resam_jax.models.sam.params import torch_to_flax

    sam = torch_sam(sam_config(plan.model_type, image_size=plan.image_size))
    perturb_(sam)
    sam.eval()
    params, unexpected = torch_to_flax({k: v.detach().numpy() for k, v in sam.state_dict().items()})
    assert not unexpected, unexpected
    device = torch_device()
    batch = synthetic_batch(plan.image_size, max(plan.instances), BATCH_SEED)
    pixels = np.array(
        normalize_pixels(jnp.asarray(batch["weak_image"]), jnp.asarray(batch["content_mask"]))
    )
    return Reference(
        plan, sam.to(device), device, params, pixels, batch["points"], batch["point_labels"]
    )


def parity(ref: Reference, rows: list, deadline: float) -> None:
    import jax
    import torch

    with torch.inference_mode(), torch_float32_exact():
        embedding_t, logits_t = (t.cpu().numpy() for t in ref.torch_forward())
    embedding_t = embedding_t.transpose(0, 2, 3, 1)  # NHWC, as ours
    with torch.inference_mode(), torch.autocast(ref.device.split(":")[0], dtype=torch.bfloat16):
        _, logits_tb = (t.cpu().numpy() for t in ref.torch_forward())
    at_zero, at_median = agreement(logits_tb, logits_t)
    rows.append(dict(part="parity", name="segment-anything autocast bfloat16 vs float32",
                     dtype="bfloat16", agreement_at_0=at_zero, agreement_at_median=at_median,
                     ok=min(at_zero, at_median) >= MIN_AGREEMENT))  # fmt: skip
    log(f"parity: PyTorch autocast bfloat16 masks agree {at_zero:.4f} / {at_median:.4f}")

    inputs = [jax.device_put(a) for a in (ref.pixels, ref.points, ref.labels)]
    for attention in ref.plan.parity_attentions:
        if time.perf_counter() > deadline:
            rows.append(dict(part="parity", name=f"resam-jax {attention}", not_run="budget"))
            continue
        state, forward, _ = ref.jax_model(attention, "float32")
        with jax.default_matmul_precision("highest"):
            embedding, logits = jax.jit(forward)(state, *inputs)
        embedding, logits = np.asarray(embedding), np.asarray(logits)
        emb_rel = float(np.abs(embedding - embedding_t).max() / np.abs(embedding_t).max())
        logit_rel = float(np.abs(logits - logits_t).max() / np.abs(logits_t).max())
        rows.append(dict(part="parity", name=f"resam-jax {attention} vs segment-anything",
                         dtype="float32", embedding_rel=emb_rel, logits_rel=logit_rel,
                         ok=max(emb_rel, logit_rel) <= MAX_F32_RELATIVE))  # fmt: skip
        log(f"parity float32 {attention}: embedding {emb_rel:.2e}, logits {logit_rel:.2e}")
        state, forward, _ = ref.jax_model(attention, "bfloat16")
        _, logits_b = jax.jit(forward)(state, *inputs)
        at_zero, at_median = agreement(np.asarray(logits_b, np.float32), logits_t)
        rows.append(dict(part="parity", name=f"resam-jax {attention} bfloat16 vs float32",
                         dtype="bfloat16", agreement_at_0=at_zero, agreement_at_median=at_median,
                         ok=min(at_zero, at_median) >= MIN_AGREEMENT))  # fmt: skip
        log(f"parity bfloat16 {attention}: masks agree {at_zero:.4f} / {at_median:.4f}")


def encoder(ref: Reference, rows: list, deadline: float) -> None:
    """The encoder forward alone, per image; FLOPs those of the reference program."""
    import jax
    import torch

    plan = ref.plan
    images = jax.device_put(ref.pixels)
    state, _, encode = ref.jax_model("reference", "float32")
    flops = (jax.jit(encode).lower(state, images).cost_analysis() or {}).get("flops")
    x = torch.from_numpy(ref.pixels).permute(0, 3, 1, 2).contiguous().to(ref.device)
    for dtype in plan.torch_dtypes:
        row = dict(part="encoder", name="segment-anything",
                   dtype=dtype if dtype == "float32" else "autocast bfloat16")  # fmt: skip
        rows.append(row)
        if time.perf_counter() > deadline:
            row["not_run"] = "budget"
            continue
        torch_reset_peak()
        autocast = torch.autocast(
            ref.device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bfloat16"
        )

        def run(autocast=autocast):
            with torch.inference_mode(), autocast:
                ref.torch_model.image_encoder(x)
            torch_sync()

        seconds, samples = median_seconds(run, plan.repeats, 1)
        row.update(seconds=seconds, samples=samples, peak_gib=torch_peak_gib(), flops=flops,
                   mfu=mfu(flops, seconds, dtype))  # fmt: skip
        log(f"encoder segment-anything {dtype}: {seconds:.3f} s")
    for attention, dtype in plan.encoder_variants:
        row = dict(part="encoder", name=f"resam-jax {attention}", dtype=dtype)
        rows.append(row)
        if time.perf_counter() > deadline:
            row["not_run"] = "budget"
            continue
        state, _, encode = ref.jax_model(attention, dtype)
        start = time.perf_counter()
        compiled = jax.jit(encode).lower(state, images).compile()
        compile_s = time.perf_counter() - start
        seconds, samples = median_seconds(
            lambda c=compiled, s=state: c(s, images).block_until_ready(), plan.repeats, 1
        )
        analysis = memory_and_cost(compiled)
        row.update(seconds=seconds, samples=samples, compile_s=compile_s,
                   peak_gib=analysis["total_bytes"] / GIB, peak_source="XLA memory analysis",
                   flops=flops, mfu=mfu(flops, seconds, dtype))  # fmt: skip
        log(f"encoder resam-jax {attention} {dtype}: {seconds:.3f} s (compile {compile_s:.1f} s)")


# --------------------------------------------------------------------------------- train step


def torch_steps(plan: Plan, rows: list, deadline: float, flops: dict) -> None:
    import torch

    from benchmarks.torch_step import public_train_step, scale_mask_logits_, torch_sam
    from resam_jax.models.sam import sam_config

    device = torch_device()
    config = sam_config(plan.model_type, image_size=plan.image_size)
    for instances in plan.instances:
        for dtype in plan.torch_step_dtypes:
            row = dict(part="step", name="PyTorch public-code step", instances=instances,
                       dtype=dtype if dtype == "float32" else "autocast bfloat16")  # fmt: skip
            rows.append(row)
            if time.perf_counter() > deadline:
                row["not_run"] = "budget"
                continue
            sam = scale_mask_logits_(torch_sam(config))
            step, notes = public_train_step(
                sam, synthetic_batch(plan.image_size, instances, BATCH_SEED), device,
                torch.bfloat16 if dtype == "bfloat16" else None,
                default_lora_start_layer(plan.model_type),
            )  # fmt: skip
            torch_reset_peak()

            def run(step=step):
                step()
                torch_sync()

            seconds, samples = median_seconds(run, plan.repeats, plan.warmup)
            row.update(seconds=seconds, samples=samples, peak_gib=torch_peak_gib(), **notes,
                       flops=flops.get(instances), mfu=mfu(flops.get(instances), seconds, dtype))  # fmt: skip
            try:
                assert_trains(notes, "PyTorch")
            except StepDoesNotTrain as e:
                row["error"] = str(e)
            log(f"step PyTorch {dtype} N={instances}: {seconds:.3f} s, {notes}")
            sam.cpu()
            torch_reset_peak()


def run_child(spec: dict) -> dict:
    """One resam-jax train-step row, in this process (the child's): compile, time, check."""
    import jax

    jax_step = build_jax_step(
        spec["model_type"], spec["image_size"], spec["attention"], spec["remat"],
        dtype=spec["dtype"], lora_start_layer=default_lora_start_layer(spec["model_type"]),
    )  # fmt: skip
    state, frozen = concrete_state(jax_step)
    batch = jax.device_put(synthetic_batch(spec["image_size"], spec["instances"], BATCH_SEED))
    start = time.perf_counter()
    compiled = jax_step.step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start
    analysis = memory_and_cost(compiled)
    metrics = {}

    def run():
        nonlocal state, metrics
        state, metrics = compiled(state, frozen, batch)
        jax.block_until_ready((state, metrics))

    seconds, samples = median_seconds(run, spec["repeats"], spec["warmup"])
    notes = {k: float(metrics[k]) for k in ("loss", "skipped", "valid_instances")}
    peak, source = jax_peak_gib()
    result = dict(name=jax_step.name, seconds=seconds, samples=samples, compile_s=compile_s,
                  peak_gib=peak, peak_source=source, xla_total_gib=analysis["total_bytes"] / GIB,
                  flops=spec["flops"], mfu=mfu(spec["flops"], seconds, spec["dtype"]), **notes)  # fmt: skip
    try:
        assert_trains(metrics, "resam-jax")
    except StepDoesNotTrain as e:
        result["error"] = str(e)
    return result


def jax_steps(plan: Plan, rows: list, deadline: float, flops: dict) -> None:
    estimate = 0.0  # seconds the last row took: a row is started only if it can finish
    for instances, attention, remat, dtype in plan.step_variants:
        row = dict(part="step", name=f"resam-jax {attention} / remat {remat}",
                   instances=instances, dtype=dtype)  # fmt: skip
        rows.append(row)
        left = deadline - time.perf_counter()
        if left < estimate or left <= 0:
            row["not_run"] = "budget"
            continue
        spec = dict(model_type=plan.model_type, image_size=plan.image_size, instances=instances,
                    attention=attention, remat=remat, dtype=dtype, repeats=plan.repeats,
                    warmup=plan.warmup, flops=flops.get(instances))  # fmt: skip
        start = time.perf_counter()
        command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
        try:
            completed = subprocess.run(
                command, stdout=subprocess.PIPE, text=True, timeout=max(left, 1), check=False
            )
        except subprocess.TimeoutExpired:
            row["error"] = f"time limit ({left:.0f} s left of the budget)"
            continue
        estimate = time.perf_counter() - start
        results = [s for s in completed.stdout.splitlines() if s.startswith(RESULT_PREFIX)]
        if results:
            result = json.loads(results[-1][len(RESULT_PREFIX) :])
            row.update(result, name=row["name"], config_name=result["name"])
        if completed.returncode:
            row.setdefault("error", f"exit code {completed.returncode}")
        log(f"step resam-jax {attention}/{remat} {dtype} N={instances}: "
            f"{row.get('seconds', float('nan')):.3f} s in {estimate:.0f} s")  # fmt: skip


# ------------------------------------------------------------------------------------ report


def fmt(value, spec: str, empty: str = "-") -> str:
    return empty if value is None else format(value, spec)


def check_text(row: dict) -> str:
    if "not_run" in row:
        return f"not run ({row['not_run']})"
    if "error" in row:
        return f"FAILED: {row['error']}"
    if row["part"] == "parity":
        if "embedding_rel" in row:
            text = f"embedding {row['embedding_rel']:.1e}, logits {row['logits_rel']:.1e} rel"
        else:
            text = f"masks agree {row['agreement_at_0']:.2%} / {row['agreement_at_median']:.2%}"
        return f"{text}: {'ok' if row['ok'] else 'FAIL'}"
    if row["part"] == "step":
        return f"valid {row.get('valid_instances', 0):g}, loss {row.get('loss', float('nan')):.3g}"
    return ""


def print_table(report: dict) -> None:
    print(f"\nDevice check: SAM {report['model_type']} at {report['image_size']}, "
          f"{report['device']} (jax {report['jax']}, torch {report['torch']}), "
          f"{report['elapsed_s']:.0f} s")  # fmt: skip
    print(f"{'part':<8} {'implementation':<44} {'dtype':<17} {'N':>3} {'s/step':>8} "
          f"{'compile s':>9} {'peak GiB':>9} {'MFU':>6}  check")  # fmt: skip
    for row in report["rows"]:
        print(f"{row['part']:<8} {row['name'][:44]:<44} {row.get('dtype', ''):<17} "
              f"{fmt(row.get('instances'), 'd', ''):>3} {fmt(row.get('seconds'), '.3f'):>8} "
              f"{fmt(row.get('compile_s'), '.1f'):>9} {fmt(row.get('peak_gib'), '.2f'):>9} "
              f"{fmt(row.get('mfu'), '.1%'):>6}  {check_text(row)}")  # fmt: skip
    print("s/step: per image for the encoder rows; median of the timed steps. peak GiB: PyTorch "
          "max_memory_allocated; resam-jax step: its process's device peak (CPU: peak RSS); "
          "resam-jax encoder: XLA memory analysis. MFU against benchmarks/peak_flops.py.")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny SAM at 256, a row of each kind")
    parser.add_argument("--json", default=None, help="default: $OUT/device_check.json if OUT is "
                        "set, else device_check.json")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=None, help="rows start only within it")
    parser.add_argument("--parts", nargs="+", default=["parity", "encoder", "step"],
                        choices=("parity", "encoder", "step"))  # fmt: skip
    parser.add_argument(
        "--step-start", type=int, default=0,
        help="skip the first K resam-jax step variants of the priority list (a second call's "
        "rows, e.g. --parts step --step-start 4)",
    )  # fmt: skip
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(RESULT_PREFIX + json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0

    import jax
    import torch

    plan = SMOKE if args.smoke else FULL
    if args.budget_s is not None:
        plan = dataclasses.replace(plan, budget_s=args.budget_s)
    plan = dataclasses.replace(plan, step_variants=plan.step_variants[args.step_start :])
    start = time.perf_counter()
    deadline = start + plan.budget_s
    device = jax.devices()[0]
    log(f"{plan.model_type} at {plan.image_size} on {device.device_kind} ({device.platform}), "
        f"torch on {torch_device()}, budget {plan.budget_s:.0f} s")  # fmt: skip
    rows: list[dict] = []
    ref = build_reference(plan) if {"parity", "encoder"} & set(args.parts) else None
    if "parity" in args.parts:
        parity(ref, rows, deadline)
    if "step" in args.parts:
        # The encoder rows, last, keep plan.encoder_reserve_s of the budget.
        step_deadline = deadline - (plan.encoder_reserve_s if "encoder" in args.parts else 0)
        flops = {n: model_flops(plan.model_type, plan.image_size, n, 1) for n in plan.instances}
        torch_steps(plan, rows, step_deadline, flops)
        jax_steps(plan, rows, step_deadline, flops)
    if "encoder" in args.parts:
        encoder(ref, rows, deadline)
    report = dict(
        model_type=plan.model_type, image_size=plan.image_size,
        device=f"{device.device_kind} ({device.platform})", jax=jax.__version__,
        torch=torch.__version__, host=platform.node(), plan=dataclasses.asdict(plan),
        elapsed_s=time.perf_counter() - start, rows=rows,
    )  # fmt: skip
    out = args.json or os.path.join(os.environ.get("OUT", "."), "device_check.json")
    Path(out).write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"JSON: {out}")
    failed = [r for r in rows if "error" in r or r.get("ok") is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
