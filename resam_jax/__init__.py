"""resam-jax: ReSAM (Refine, Requery, Reinforce) point-supervised SAM adaptation in JAX/Flax."""

__version__ = "0.1.0"
