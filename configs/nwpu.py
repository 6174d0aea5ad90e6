r"""ReSAM on NWPU VHR-10 with SAM ViT-B (docs/method.md section 4: LoRA from block 6, milestones 2000/4000, 10 epochs).

    python -m resam_jax.main --config configs/nwpu.py --workdir runs/nwpu
    python -m resam_jax.main --config configs/nwpu.py:camera --workdir runs/nwpu_camera

Needs weights/sam_vit_b (python -m weights_convert.convert_sam --checkpoint sam_vit_b_01ec64.pth
--output weights/sam_vit_b) and the prepared dataset (python -m resam_jax.data.prepare
--dataset nwpu_vhr10 --manual-dir data/NWPU --data-dir ~/tensorflow_datasets).

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
    config.data.dataset = "nwpu_vhr10"
    config.data.manual_dir = "data/NWPU"
    config.data.eval_split = "val"  # NWPU_instances_val.json: 130 images, 743 instances
    config.model.lora_start_layer = 6  # public config_nwpu
    config.optim.milestones = (2000, 4000)  # public config_nwpu
    config.train.num_epochs = 10  # public config_nwpu
    return config
