"""Datasets (TFDS builders over the published layouts) and the ReSAM input pipeline.

Build once with `python -m resam_jax.data.prepare --dataset nwpu_vhr10 --manual-dir data/NWPU
--data-dir DIR`, then `make_dataset(DataConfig(data_dir=DIR), "train", train=True, seed=1337)`
yields batches of the batch contract.
"""

from resam_jax.data.coco import DataError
from resam_jax.data.pipeline import DataConfig, make_dataset, steps_per_epoch

__all__ = ["DataConfig", "DataError", "make_dataset", "steps_per_epoch"]
