"""Datasets (TFDS builders over the published layouts) and the ReSAM input pipeline."""
