"""Commands built on the training run (resam_jax.run): the adaptation study, the robustness
sweep, the pseudo-label diagnosis, and the supervised pretraining loss of tools/."""
