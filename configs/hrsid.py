r"""ReSAM on HRSID inshore (SAR) with SAM ViT-B (METHOD.md: LoRA from block 1, milestones 1500/2000, 5 epochs).

    python -m resam_jax.main --config configs/hrsid.py --workdir runs/hrsid

Needs weights/sam_vit_b (python -m weights_convert.convert_sam --checkpoint sam_vit_b_01ec64.pth
--output weights/sam_vit_b) and the prepared dataset (python -m resam_jax.data.prepare
--dataset hrsid --config inshore --manual-dir data/HRSID --data-dir ~/tensorflow_datasets).
"""

from resam_jax.config import base_config


def get_config():
    config = base_config()
    config.data.dataset = "hrsid"
    config.data.dataset_config = "inshore"
    config.data.manual_dir = "data/HRSID"
    config.data.eval_split = "test"
    config.model.lora_start_layer = 1
    config.optim.milestones = (1500, 2000)
    config.train.num_epochs = 5
    return config
