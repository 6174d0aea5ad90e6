r"""The embedded demo: the whole ReSAM loop on this machine's CPU in a few minutes, nothing downloaded.

    python -m resam_jax.main --config configs/demo.py --workdir /tmp/resam_demo

A tiny, randomly initialised SAM (no pretrained weights, so the scores only show that the loop
runs) trained on a small synthetic remote-sensing-like dataset (textured ground with buildings
and ships) that is generated into the workdir and read through the coco_instances TFDS builder:
Direct SAM evaluation, ReSAM training, evaluation, checkpoints, overlays and the exports.
"""

from resam_jax.config import base_config


def get_config():
    config = base_config()
    config.data.dataset = "coco_instances"
    config.data.dataset_config = "resam_demo"
    config.data.data_dir = ""  # <workdir>/data
    config.data.manual_dir = ""  # <workdir>/data/synthetic
    config.data.synthetic_images = 48
    config.data.image_size = 128
    config.data.max_instances = 8
    config.data.batch_size = 4
    config.model.model_type = "tiny"
    config.model.checkpoint = ""
    config.model.lora_start_layer = 0
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 10
    config.optim.milestones = (60, 90)
    config.method.ssa_queue_size = 8
    config.method.outlier_window = 10
    config.train.num_epochs = 3
    config.train.log_every_steps = 4
    config.train.checkpoint_every_steps = 20
    config.train.num_overlays = 4
    return config
