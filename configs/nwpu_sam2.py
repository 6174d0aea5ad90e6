r"""ReSAM on NWPU VHR-10 with SAM 2.1 Hiera-b+ in place of SAM ViT-B: configs/nwpu.py's run on the
second backbone (docs/sam2.md).

    python -m resam_jax.main --config configs/nwpu_sam2.py --workdir runs/nwpu_sam2
    python -m resam_jax.main --config configs/nwpu_sam2.py:camera --workdir runs/nwpu_sam2_camera

Needs weights/sam2.1_hiera_b+, Meta's sam2.1_hiera_base_plus.pt (from
https://dl.fbaipublicfiles.com/segment_anything_2/092824/) converted once:

    python -m weights_convert.convert_sam2 --checkpoint sam2.1_hiera_base_plus.pt \
        --output weights/sam2.1_hiera_b+

and the prepared dataset, as for configs/nwpu.py (python -m resam_jax.data.prepare --dataset
nwpu_vhr10 --manual-dir data/NWPU --data-dir ~/tensorflow_datasets).

What differs from configs/nwpu.py (resam_jax.config.use_sam2): config.model.family "sam2",
model_type "b+", 1024 px inputs, model.pixel_norm "sam" (SAM2Transforms' ImageNet mean / std on
[0, 1], what SAM 2's weights expect; the SAM configs feed [0, 1] as the public code does), LoRA
rank 4 on q and v of Hiera blocks 12-23 (the second half of b+'s 24 blocks). The data (the image
resized on its longest side and padded, the padding zero after the normalisation), the schedule,
the method, its variants (`:camera`) and the evaluation are configs/nwpu.py's. Another size:
--config.model.model_type=t|s|l --config.model.checkpoint=weights/sam2.1_hiera_<size>
--config.model.lora_start_layer=6|8|24 (half of 12 | 16 | 48 blocks). The run's
export/sam_merged is a SAM 2 checkpoint: resam_jax.predict / predict_scene read it, and
python -m weights_convert.export_sam2 writes it as a .pt that build_sam2 loads.
"""

from pathlib import Path

from resam_jax.config import config_from_file, use_sam2


def get_config(variant: str = "v1"):
    return use_sam2(config_from_file(Path(__file__).with_name("nwpu.py"), variant), "b+")
