r"""ReSAM on NWPU VHR-10 with SAM ViT-B (METHOD.md: LoRA from block 6, milestones 2000/4000, 10 epochs).

    python -m resam_jax.main --config configs/nwpu.py --workdir runs/nwpu

Needs weights/sam_vit_b (python -m weights_convert.convert_sam --checkpoint sam_vit_b_01ec64.pth
--output weights/sam_vit_b) and the prepared dataset (python -m resam_jax.data.prepare
--dataset nwpu_vhr10 --manual-dir data/NWPU --data-dir ~/tensorflow_datasets).
Other rows: --config.method.mode=supervised | direct.
"""

from resam_jax.config import base_config


def get_config():
    config = base_config()
    config.data.dataset = "nwpu_vhr10"
    config.data.manual_dir = "data/NWPU"
    config.data.eval_split = "val"
    config.model.lora_start_layer = 6
    config.optim.milestones = (2000, 4000)
    config.train.num_epochs = 10
    return config
