"""The run configuration every configs/*.py starts from.

Sections and who reads them:
    method, optim, eval, model.pixel_norm, train.num_epochs   the train and eval steps
                                            (resam_jax.train_step.default_config holds their defaults)
    data       resam_jax.data.pipeline.DataConfig, plus the run-only keys in RUN_DATA_KEYS
    model      which SAM and which LoRA; model.checkpoint is a converted SAM directory
    train      the loop: length, logging, checkpoints, evaluation, overlays

Every key exists here, so `--config.a.b=value` on the command line can only change a known
field: the config is locked and an unknown key is an error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import ml_collections

from resam_jax.data.pipeline import DataConfig
from resam_jax.train_step import default_config

# Keys of config.data that the run reads itself; the others are DataConfig fields.
RUN_DATA_KEYS = ("manual_dir", "train_split", "eval_split", "synthetic_images", "synthetic_style")

# The tiny SAM shipped with the package for the demo (tools/pretrain_tiny_sam.py made it),
# found next to the code so the demo runs from any working directory.
DEMO_SAM_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "sam_tiny_demo"


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by all configs: ReSAM on SAM ViT-B at 1024 under the published protocol
    (docs/method.md sections 3-5; the switches are listed in section 9)."""
    config = default_config()
    config.seed = 1337

    # The loop counts epochs itself (DataConfig.num_epochs stays None: repeat), and
    # data.batch_size is the GLOBAL batch, split over hosts by the loop.
    config.data = ml_collections.ConfigDict(
        {f.name: f.default for f in dataclasses.fields(DataConfig) if f.name != "num_epochs"}
    )
    config.data.data_dir = "~/tensorflow_datasets"  # "" = <workdir>/data
    config.data.manual_dir = ""  # the published release; named in "not prepared" errors
    config.data.train_split = "train"
    config.data.eval_split = "val"
    # > 0: generate a synthetic dataset of this many training images first (the demo).
    config.data.synthetic_images = 0
    config.data.synthetic_style = "target"  # resam_jax.data.synthetic.STYLES

    config.model.update(
        model_type="vit_b",  # vit_b | vit_l | vit_h | tiny | small
        checkpoint="weights/sam_vit_b",  # converted SAM; "" = random initialisation
        lora_rank=4,
        lora_start_layer=6,
        dtype="float32",  # computation dtype: float32 | bfloat16
    )

    config.train.update(
        max_steps=0,  # > 0 stops after this many steps (smoke runs); 0 = num_epochs
        log_every_steps=20,
        checkpoint_every_steps=500,
        keep_checkpoints=3,
        eval_before_training=True,  # the Direct SAM row (LoRA B = 0 is SAM itself)
        eval_every_epochs=1,
        num_overlays=4,  # validation images drawn as GT | prediction | pseudo-label PNGs
    )
    return config
