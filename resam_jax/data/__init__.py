"""Datasets (TFDS builders over the published layouts) and the ReSAM input pipeline.

Build once with `python -m resam_jax.data.prepare --dataset nwpu_vhr10 --manual-dir data/NWPU
--data-dir DIR`, then `resam_jax.data.pipeline.make_dataset(DataConfig(data_dir=DIR), "train",
train=True, seed=1337)` yields batches of the batch contract. The package imports nothing on
its own, so its schema (resam_jax.data.config) can be read without TFDS or grain.
"""
