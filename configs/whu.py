r"""ReSAM on WHU building with SAM ViT-B (METHOD.md: LoRA from block 1, milestones 8000/15000, 10 epochs).

    python -m resam_jax.main --config configs/whu.py --workdir runs/whu

Needs weights/sam_vit_b (python -m weights_convert.convert_sam --checkpoint sam_vit_b_01ec64.pth
--output weights/sam_vit_b) and the prepared dataset (python -m resam_jax.data.prepare
--dataset whu_building --manual-dir data/WHU --data-dir ~/tensorflow_datasets).
"""

from resam_jax.config import base_config


def get_config():
    config = base_config()
    config.data.dataset = "whu_building"
    config.data.manual_dir = "data/WHU"
    config.data.eval_split = "val"
    config.model.lora_start_layer = 1
    config.optim.milestones = (8000, 15000)
    config.train.num_epochs = 10
    config.train.checkpoint_every_steps = 1000
    return config
