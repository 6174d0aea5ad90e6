"""Prediction with a converted or adapted checkpoint: predictor.py (SamPredictor), the commands
image.py (`python -m resam_jax.predict`, one image or a folder through folder.py) and scene.py
(`python -m resam_jax.predict_scene`, large scenes through tiling.py), and common.py, what they
share."""
