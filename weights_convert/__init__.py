"""Conversion of Meta's SAM PyTorch checkpoints to resam-jax (orbax) checkpoints."""
