"""A tiny SAM 2 (hiera_test, 8 Hiera blocks, at a small input size) saved as a converted
checkpoint, for the tests of the commands on the SAM 2 family: random weights, no torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from resam_jax.models.sam2 import sam2_config
from resam_jax.models.sam2.checkpoint import save_sam2_params
from resam_jax.models.sam2.params import param_shapes

# What a conversion keeps beside the image model (Meta's key, a shape of hiera_test's): an
# export must carry it into the .pt so that sam2 loads the file strictly.
VIDEO_ONLY = {"maskmem_tpos_enc": (7, 1, 1, 64), "no_obj_ptr": (1, 256)}


def tiny_sam2_params(image_size: int = 64, seed: int = 0) -> dict[tuple, np.ndarray]:
    """Random parameters of hiera_test (Flax path -> array), drawn in numpy (JAX's initialisers
    compile once per shape: seconds): kernels N(0, 1 / fan_in), norm scales 1 + N(0, 0.1^2),
    everything else N(0, 0.1^2)."""
    config = sam2_config("hiera_test", image_size=image_size)
    rng = np.random.default_rng(seed)
    params = {}
    for path, shape in param_shapes(config).items():
        if path[-1] == "kernel":
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        elif path[-1] == "scale":
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        params[path] = value.astype(np.float32)
    return params


def save_tiny_sam2(directory: Path, image_size: int = 64, seed: int = 0) -> Path:
    """A random hiera_test for `image_size` inputs, written as convert_sam2 writes a checkpoint
    (with video-only tensors and a release)."""
    config = sam2_config("hiera_test", image_size=image_size)
    params = tiny_sam2_params(image_size, seed)
    rng = np.random.default_rng(seed + 1)
    video_only = {k: rng.standard_normal(s).astype(np.float32) for k, s in VIDEO_ONLY.items()}
    source = {"path": f"random hiera_test (seed {seed})", "release": "2.1"}
    save_sam2_params(directory, params, config, source, video_only)
    return directory
