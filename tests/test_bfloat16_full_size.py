"""bfloat16 against float32 on the full-size ViT-B (1024 x 1024), real NWPU VHR-10 images:
the masks agree on at least 99% of the pixels (issue 11, "scale").

Weights: segment-anything's ViT-B random initialisation, perturbed so that no parameter is
symmetric (sam_reference.build_reference), converted to ours; the same weights run with
model.dtype "float32" and "bfloat16". Prompts: every ground-truth box of NWPU val images, and
one positive (box centre) + one negative point (outside the box) per object. Masks are the
logits > 0 at the original resolution, compared per image over all its instances.

Random weights do not segment objects: their masks need not be interesting at logit 0. So the
masks are also compared at the threshold where the float32 logits of each instance have half
of the image as foreground (their median): there half the pixels lie on either side and a
bfloat16 error moves as many pixels across as it can.
"""

import json
import time

import numpy as np
import pytest
from PIL import Image
from sam_reference import build_reference, numpy_state_dict

from resam_jax.inference.predictor import SamPredictor
from resam_jax.models.sam import sam_config
from resam_jax.models.sam.checkpoint import sam_from_params
from resam_jax.models.sam.params import torch_to_flax

pytestmark = pytest.mark.slow

IMAGES = ("030.jpg", "377.jpg")  # NWPU VHR-10 val images
MAX_OBJECTS = 8  # per image, the first in annotation order
MIN_AGREEMENT = 0.99


@pytest.fixture(scope="module")
def vit_b_params():
    params, unexpected = torch_to_flax(numpy_state_dict(build_reference(sam_config("vit_b"), 21)))
    assert not unexpected, unexpected
    return params


def nwpu_prompts(nwpu_dir, file_name: str):
    """(image, [(name, predict kwargs)]) for one val image."""
    annotations = json.loads((nwpu_dir / "Annotations/NWPU_instances_val.json").read_text())
    (image_id,) = [i["id"] for i in annotations["images"] if i["file_name"] == file_name]
    image = np.asarray(Image.open(nwpu_dir / "Images" / file_name).convert("RGB"))
    h, w = image.shape[:2]
    objects = [a["bbox"] for a in annotations["annotations"] if a["image_id"] == image_id]
    prompts = []
    for k, (x, y, bw, bh) in enumerate(objects[:MAX_OBJECTS]):
        box = np.array([x, y, x + bw - 1, y + bh - 1], np.float32)
        prompts.append((f"box{k}", dict(box=box, multimask_output=False)))
        centre = [x + bw / 2, y + bh / 2]
        outside = [min(x + bw + 20, w - 1), min(y + bh + 20, h - 1)]
        points = dict(point_coords=np.array([centre, outside]), point_labels=np.array([1, 0]))
        prompts.append((f"points{k}", dict(points, multimask_output=False)))
    return image, prompts


def logits_of(params, dtype: str, image, prompts) -> np.ndarray:
    """Mask logits [P, H, W] at the original resolution, one per prompt."""
    predictor = SamPredictor(sam_from_params(sam_config("vit_b", dtype=dtype), params))
    predictor.set_image(image)
    return np.concatenate(
        [predictor.predict(**kwargs, return_logits=True)[0] for _, kwargs in prompts]
    )


def test_bfloat16_masks_agree_with_float32_on_real_images(vit_b_params, nwpu_dir):
    for file_name in IMAGES:
        image, prompts = nwpu_prompts(nwpu_dir, file_name)
        started = time.perf_counter()
        f32 = logits_of(vit_b_params, "float32", image, prompts)
        bf16 = logits_of(vit_b_params, "bfloat16", image, prompts)
        seconds = time.perf_counter() - started
        assert f32.dtype == bf16.dtype == np.float32 and f32.shape == bf16.shape

        at_zero = np.mean((bf16 > 0) == (f32 > 0))
        median = np.median(f32, axis=(1, 2), keepdims=True)
        at_median = np.mean((bf16 > median) == (f32 > median))
        foreground = (f32 > 0).mean(axis=(1, 2))
        print(
            f"{file_name} {image.shape[:2]}, {len(prompts)} prompts: bf16 vs f32 masks agree on "
            f"{100 * at_zero:.3f}% of pixels at logit 0 (f32 foreground {100 * foreground.min():.1f}"
            f"-{100 * foreground.max():.1f}%), {100 * at_median:.3f}% at the f32 median; "
            f"logits max abs diff {np.abs(bf16 - f32).max():.3f} (|f32| max "
            f"{np.abs(f32).max():.2f}); {seconds:.0f} s"
        )
        assert at_zero >= MIN_AGREEMENT
        assert at_median >= MIN_AGREEMENT
        # Not degenerate: the logit-0 masks are neither all empty nor all full.
        assert 0.01 < foreground.mean() < 0.99, foreground
