r"""ReSAM on HRSID inshore (SAR) with SAM ViT-B (docs/method.md section 4: LoRA from block 1, milestones 1500/2000, 5 epochs).

    python -m resam_jax.main --config configs/hrsid.py --workdir runs/hrsid
    python -m resam_jax.main --config configs/hrsid.py:camera --workdir runs/hrsid_camera

Needs weights/sam_vit_b (python -m weights_convert.convert_sam --checkpoint sam_vit_b_01ec64.pth
--output weights/sam_vit_b) and the prepared dataset (python -m resam_jax.data.prepare
--dataset hrsid --config inshore --manual-dir data/HRSID --data-dir ~/tensorflow_datasets).

Protocol: the published one, as every field of resam_jax/config.py's base_config defaults to
(docs/method.md section 9 lists each switch and its alternative); SSA keeps its gradient
(--config.method.ssa_max_weight=0 gives the gradients the public runs trained with).
Other rows: --config.method.mode=supervised | direct. `:camera` gives the public camera
branch's step (method.variant="camera", docs/method.md section 10) with that branch's
settings for this dataset.
The camera branch ran HRSID for 10 epochs (its configs/config_hrsid.py), which :camera sets;
--config.method.variant=camera alone keeps 5.
"""

from resam_jax.config import base_config


def get_config(variant: str = "v1"):
    config = base_config()
    config.method.variant = variant  # "v1" | "camera"
    config.data.dataset = "hrsid"
    config.data.dataset_config = "inshore"  # the published HRSID rows are inshore
    config.data.manual_dir = "data/HRSID"
    config.data.eval_split = "test"  # inshore_test.json
    config.model.lora_start_layer = 1  # public config_hrsid
    config.optim.milestones = (1500, 2000)  # public config_hrsid
    config.train.num_epochs = 10 if variant == "camera" else 5  # public config_hrsid
    return config
