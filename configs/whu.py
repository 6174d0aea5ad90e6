r"""ReSAM on WHU building with SAM ViT-B (docs/method.md section 4: LoRA from block 1, milestones 8000/15000, 10 epochs).

    python -m resam_jax.main --config configs/whu.py --workdir runs/whu
    python -m resam_jax.main --config configs/whu.py:camera --workdir runs/whu_camera

Needs weights/sam_vit_b (python -m weights_convert.convert_sam --checkpoint sam_vit_b_01ec64.pth
--output weights/sam_vit_b) and the prepared dataset (python -m resam_jax.data.prepare
--dataset whu_building --manual-dir data/WHU --data-dir ~/tensorflow_datasets).

Protocol: the published one, as every field of resam_jax/config.py's base_config defaults to
(docs/method.md section 9 lists each switch and its alternative); SSA keeps its gradient
(--config.method.ssa_max_weight=0 gives the gradients the public runs trained with).
Other rows: --config.method.mode=supervised | direct. `:camera` gives the public camera
branch's step (method.variant="camera", docs/method.md section 10) with that branch's
settings for this dataset.
"""

from resam_jax.config import base_config


def get_config(variant: str = "v1"):
    config = base_config()
    config.method.variant = variant  # "v1" | "camera"
    config.data.dataset = "whu_building"
    config.data.manual_dir = "data/WHU"
    config.data.eval_split = "val"  # the public code evaluates on val/image
    config.model.lora_start_layer = 1  # public config_whu
    config.optim.milestones = (8000, 15000)  # public config_whu
    config.train.num_epochs = 10  # public config_whu
    config.train.checkpoint_every_steps = 1000  # ~4300 steps per epoch
    return config
