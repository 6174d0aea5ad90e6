"""Writes tests/data/imagecorruptions_reference.npz: the `imagecorruptions` package's own output
(Hendrycks & Dietterich's ImageNet-C definitions, v1.1.2) for every corruption but
impulse_noise at severities 1, 3 and 5 on the test image, which
tests/test_data_corruptions.py compares resam_jax.data.corruptions against.

The package does not import on today's stack (no pkg_resources, np.float_, skimage's
`multichannel`); this script shims those three breakages and needs the package, OpenCV and
scikit-image installed (not project dependencies):

    pip install imagecorruptions opencv-python-headless scikit-image
    python tests/make_corruption_reference.py
"""

import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from test_data_corruptions import CORRUPTIONS, REFERENCE_IMAGE, REFERENCE_SEED  # noqa: E402

from resam_jax.data import corruptions  # noqa: E402

OUTPUT = Path(__file__).parent / "data" / "imagecorruptions_reference.npz"


def import_reference():
    shim = types.ModuleType("pkg_resources")  # setuptools >= 81 has no pkg_resources
    shim.resource_filename = lambda module, path: str(
        Path(sys.modules[module].__file__).parent / path
    )
    sys.modules["pkg_resources"] = shim
    np.float_ = np.float64  # fog, NumPy 2
    import imagecorruptions
    from skimage.filters import gaussian

    def gaussian_multichannel(*args, multichannel=None, **kwargs):  # glass_blur, skimage >= 0.21
        return gaussian(*args, channel_axis=-1 if multichannel else None, **kwargs)

    imagecorruptions.corruptions.gaussian = gaussian_multichannel
    return imagecorruptions


def main():
    reference = import_reference()
    outputs = {}
    for name in CORRUPTIONS:
        if name == "impulse_noise":  # scikit-image draws it from its own, unseeded generator
            continue
        for severity in (1, 3, 5):
            # The package draws from NumPy's global state: seed it as our generator is seeded.
            np.random.set_state(corruptions.corruption_rng(REFERENCE_SEED, name).get_state())
            image = reference.corrupt(REFERENCE_IMAGE, severity=severity, corruption_name=name)
            outputs[f"{name}_{severity}"] = np.asarray(image, np.uint8)
    np.savez_compressed(OUTPUT, image=REFERENCE_IMAGE, **outputs)
    print(f"wrote {len(outputs)} references to {OUTPUT}")


if __name__ == "__main__":
    main()
