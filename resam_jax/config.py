"""The run configuration every configs/*.py starts from.

The bottom of the package: it imports ml_collections and the data schema
(resam_jax/data/config.py) only, and every layer above reads from it. Sections and who reads
them:
    method, optim, eval, model.pixel_norm, train.num_epochs, train.grad_accum_steps
               the train and eval steps
    data       resam_jax.data.config.DataConfig's fields, plus keys the run reads itself
               (manual_dir, train_split, eval_split, synthetic_*): run/setup.host_data_config
    model      which backbone (model.family: SAM or SAM 2.1) and which LoRA; model.checkpoint is
               a converted checkpoint directory
    train      the loop: length, logging, checkpoints, evaluation, overlays

Every key exists here, so `--config.a.b=value` on the command line can only change a known
field: the config is locked and an unknown key is an error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections

from resam_jax.data.config import DataConfig

# The tiny SAM shipped with the package for the demo (tools/pretrain_tiny_sam.py made it),
# found next to the code so the demo runs from any working directory.
DEMO_SAM_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "sam_tiny_demo"
# The small SAM pretrained here on NWPU's source half (tools/pretrain_sam.py), for the study.
SMALL_NWPU_SAM_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "sam_small_nwpu"
# The same small SAM pretrained on 384 px tiles of the source half at native resolution, for
# the native-resolution study (configs/study_nwpu.py; its README has the recipe and scores).
TILES_NWPU_SAM_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "sam_small_nwpu_tiles"

# SAM 2.1 (config.model.family="sam2"): Meta's sizes as config.model.model_type takes them ->
# (blocks of their Hiera trunk, Meta's checkpoint file, which python -m
# weights_convert.convert_sam2 converts into weights/sam2.1_hiera_<size>).
SAM2_SIZES = {
    "t": (12, "sam2.1_hiera_tiny.pt"),
    "s": (16, "sam2.1_hiera_small.pt"),
    "b+": (24, "sam2.1_hiera_base_plus.pt"),
    "l": (48, "sam2.1_hiera_large.pt"),
}

# The two steps of the public ReSAM code (docs/method.md section 10), as values of the method
# switches: "v1", its master branch (paper v1), and "camera", its camera branch (CVPR 2026).
METHOD_VARIANTS = {
    "v1": dict(
        refine_entropy="nats", refine_threshold=0.3, mask_loss="focal", iou_target_on="logits",
        ssa_source="queue", ssa_schedule="sigmoid", ssa_max_weight=4.0, outlier_rule="public",
    ),
    "camera": dict(
        refine_entropy="bits", refine_threshold=0.5, mask_loss="bce", iou_target_on="probs",
        ssa_source="batch", ssa_schedule="constant", ssa_max_weight=0.1, outlier_rule="none",
    ),
}  # fmt: skip
# The values each enumerated method field accepts.
METHOD_CHOICES = {
    "variant": tuple(METHOD_VARIANTS),
    "refine_entropy": ("nats", "bits"),
    "mask_loss": ("focal", "bce"),
    "iou_target_on": ("logits", "probs"),
    "ssa_source": ("queue", "batch"),
    "ssa_form": ("matched", "softmax"),
    "ssa_schedule": ("sigmoid", "constant"),
    "outlier_rule": ("public", "accepted", "none"),
}


def resolve_method_variant(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Moves every method switch still at its "v1" value to method.variant's value, in place,
    and checks the method's choices; a ValueError names the field and the allowed values.

    A switch set to another value (in the config file or on the command line) is kept, so
    `--config.method.variant=camera --config.method.refine_threshold=0.4` is the camera step
    with another threshold; a camera step with a v1 value starts from variant "v1" and sets the
    other switches instead. Resolving twice changes nothing.
    """
    method = config.method
    for field, allowed in METHOD_CHOICES.items():
        if method[field] not in allowed:
            raise ValueError(f"config.method.{field}={method[field]!r}; expected one of {allowed}")
    v1 = METHOD_VARIANTS["v1"]
    for field, value in METHOD_VARIANTS[method.variant].items():
        if method[field] == v1[field]:
            method[field] = value
    if method.ssa_source == "batch" and method.ssa_form != "matched":
        raise ValueError(
            f"config.method.ssa_form={method.ssa_form!r} with ssa_source='batch'; the step's "
            "batch pairs each instance with itself: expected ssa_form='matched'"
        )
    return config


def _step_config() -> ml_collections.ConfigDict:
    """The fields the train and eval steps read (resam_jax.method.train_step, resam_jax.method.eval_step)."""
    config = ml_collections.ConfigDict()
    # The switches of METHOD_VARIANTS hold the "v1" values; resolve_method_variant moves them to
    # the variant's.
    config.method = ml_collections.ConfigDict(
        dict(
            mode="resam",  # "resam" | "supervised" | "direct"
            variant="v1",  # "v1" | "camera": the public branch whose step it is (METHOD_VARIANTS)
            refine_entropy="nats",  # H in "nats" | "bits" (H / ln 2, in [0, 1])
            refine_threshold=0.3,  # keep pixel if p * (1 - H) > threshold
            requery=True,  # False: train on the refined masks ("Refine only" ablation)
            ema_rate=0.0,  # teacher LoRA EMA; 0 = the current student (public code)
            mask_loss="focal",  # the pixel term beside dice: "focal" | "bce"
            focal_alpha=0.8,
            focal_gamma=2.0,
            focal_weight=20.0,  # mask_loss="focal"
            bce_weight=0.1,  # mask_loss="bce"
            dice_weight=1.0,
            iou_weight=1.0,
            ssa_source="queue",  # SSA over the full queues | the step's "batch" (once they are full)
            ssa_form="matched",  # "matched" (public code) | "softmax" (paper v1); queue only
            ssa_tau=0.05,  # softmax form only
            ssa_queue_size=32,
            ssa_schedule="sigmoid",  # "sigmoid" | "constant" (the weight is ssa_max_weight)
            ssa_max_weight=4.0,  # beta(e) = ssa_max_weight / (1 + exp(-(e - (E + 1) / 2)))
            outlier_factor=4.0,
            outlier_window=50,
            # "public" (LossWatcher) | "accepted" | "none"; train_state.LossWindow
            outlier_rule="public",
            iou_target_on="logits",  # IoU-head target: logits >= 0.5 (public) | "probs"
        )
    )
    config.optim = ml_collections.ConfigDict(
        dict(lr=5e-4, weight_decay=1e-4, warmup_steps=250, milestones=(2000, 4000), decay=0.1)
    )
    # grad_accum_steps: micro-batches per update; the batch (data.batch_size, split over the
    # devices) is cut into that many, their LoRA gradients summed before one optimiser update.
    # instance_chunk_size: the student decodes and scores this many instance slots at a time,
    # recomputing them in the backward pass (resam_jax/method/instances.py in_instance_chunks), so
    # that 50 instances per image cost the decoder activations of one chunk; 0: all at once.
    config.train = ml_collections.ConfigDict(
        dict(num_epochs=10, grad_accum_steps=1, instance_chunk_size=8)
    )
    # [0, 1] RGB, no mean/std (what the public code feeds SAM) | "sam" (SAM's normalisation)
    config.model = ml_collections.ConfigDict(dict(pixel_norm="unit"))
    config.eval = ml_collections.ConfigDict(
        dict(
            prompt="points",  # "points" | "boxes"
            threshold_on="logits",  # "logits" (public code) | "probs"
            reduction="per_instance",  # "per_instance" (published numbers) | "pooled"
            prompt_seeds=3,  # evaluations over this many point draws: mean and std
        )
    )
    return config


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by all configs: ReSAM on SAM ViT-B at 1024 under the published protocol
    (docs/method.md sections 3-5; section 9 lists the switches): per-instance IoU/F1 averaged
    within each image then over images (eval.reduction="per_instance"), logits thresholded at
    0.5, [0,1] pixel input (model.pixel_norm="unit"), 1 positive + 1 negative point per instance
    with negatives over the whole padded frame (data.negative_points="frame"), photometric
    augmentations before the resize (data.strong_before_resize=True), IoU-head target on logits
    >= 0.5 (method.iou_target_on="logits"), the public loss watcher (method.outlier_rule=
    "public"); evaluation repeated over eval.prompt_seeds=3 point draws (mean and std). The
    step is the public master branch's (method.variant="v1"; "camera" is the camera branch's,
    set by resolve_method_variant when the run starts). The public code's three bugs stay fixed
    (SSA with gradient, slot-aligned Requery, one weak encoding).
    """
    config = _step_config()
    config.seed = 1337

    # The loop counts epochs itself (DataConfig.num_epochs stays None: repeat), and splits the
    # GLOBAL batch over the processes (each one's DataConfig.host_batch_size).
    run_owned = ("num_epochs", "host_batch_size")
    config.data = ml_collections.ConfigDict(
        {f.name: f.default for f in dataclasses.fields(DataConfig) if f.name not in run_owned}
    )
    config.data.batch_size = 1  # images per step over all devices of all processes
    config.data.data_dir = "~/tensorflow_datasets"  # "" = <workdir>/data
    config.data.manual_dir = ""  # the published release; named in "not prepared" errors
    config.data.train_split = "train"
    config.data.eval_split = "val"
    # > 0: generate a synthetic dataset of this many training images first (the demo).
    config.data.synthetic_images = 0
    config.data.synthetic_style = "target"  # resam_jax.data.synthetic.STYLES

    config.model.update(
        # The backbone (resam_jax/models): "sam" (Segment Anything, ViT) | "sam2" (SAM 2.1,
        # Hiera: configs/*_sam2.py). Each family checks its own values of the fields below.
        family="sam",
        model_type="vit_b",  # sam: vit_b | vit_l | vit_h | tiny | small; sam2: t | s | b+ | l
        checkpoint="weights/sam_vit_b",  # converted checkpoint; "" = random initialisation
        lora_rank=4,
        lora_start_layer=6,  # LoRA on this block to the last
        lora_targets=("q", "v"),  # thirds of the attention's qkv with LoRA (sam: q, v only)
        dtype="float32",  # computation dtype: float32 | bfloat16
        # Speed and memory (resam_jax.models.sam.architecture.SamConfig): attention "reference" |
        # "chunked" | "dot_product"; remat of the LoRA blocks "none" | "blocks" | a checkpoint
        # policy (sam2: "reference" | "chunked", remat "none" | "blocks"). Chunked by 128 with
        # remat "blocks" is the fastest and smallest on CPU (docs/benchmarks.md has the figures).
        attention="chunked",
        attention_chunk_size=128,  # queries per chunk of "chunked" attention
        remat="blocks",
    )

    config.train.update(
        max_steps=0,  # > 0 stops after this many steps (smoke runs); 0 = num_epochs
        log_every_steps=20,
        checkpoint_every_steps=500,
        keep_checkpoints=3,
        eval_before_training=True,  # the Direct SAM row (LoRA B = 0 is SAM itself)
        eval_every_epochs=1,
        num_overlays=4,  # validation images drawn as GT | prediction | pseudo-label PNGs
        # After a ReSAM run, run the same config in <workdir>/supervised with mode "supervised"
        # (GT masks) and add its final row to the table (the demo's upper bound).
        compare_with_supervised=False,
        # After a ReSAM run, run the same config with each of these method.variant values in
        # <workdir>/<variant> and add its final row to the table (the demo's camera row).
        compare_variants=(),
    )
    return config


def use_sam2(
    config: ml_collections.ConfigDict, model_type: str = "b+"
) -> ml_collections.ConfigDict:
    """A SAM config moved to SAM 2.1, in place (configs/*_sam2.py): model.family "sam2", Meta's
    size `model_type` (t | s | b+ | l) from its converted checkpoint weights/sam2.1_hiera_<size>,
    1024 px inputs, the pixel input SAM 2's weights expect (model.pixel_norm "sam":
    SAM2Transforms' ImageNet mean / std on [0, 1]), LoRA rank 4 on q and v of the second half
    of the Hiera blocks. Everything else (data, schedule, method, evaluation) stays."""
    if model_type not in SAM2_SIZES:
        raise ValueError(f"SAM 2.1 model_type {model_type!r}; expected one of {tuple(SAM2_SIZES)}")
    depth, _ = SAM2_SIZES[model_type]
    config.model.update(
        family="sam2",
        model_type=model_type,
        checkpoint=f"weights/sam2.1_hiera_{model_type}",
        pixel_norm="sam",
        lora_rank=4,
        lora_start_layer=depth // 2,
        lora_targets=("q", "v"),
    )
    config.data.image_size = 1024
    return config


def config_from_file(path: str | Path, *args) -> ml_collections.ConfigDict:
    """get_config(*args) of a config file, by path: how one configs/*.py builds on another (the
    configs are files, not a package, so that --config takes any path)."""
    import importlib.util

    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"_resam_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)
