"""Segment everything: masks per second of resam_jax.inference.automatic against
segment_anything's SamAutomaticMaskGenerator on the same weights, in one run, on the CPU.

    python benchmarks/automatic.py [--images 001.jpg 050.jpg 120.jpg] [--points-per-side 16]
        [--max-side 384] [--nwpu-dir ../shared/data/NWPU]

The weights are the packaged small SAM (384 px input, [0, 1] pixels) with the multimask heads
tests/test_automatic.py gives it (its own are untrained); the images are real NWPU VHR-10
images brought to --max-side; the options are the test's. Each side segments every image once
untimed (our compilation, PyTorch's first-call set-up), then once timed; the masks each kept
and how many of the reference's ours matches (one to one at mask IoU >= 0.95) are printed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from sam_reference import build_reference  # noqa: E402
from test_automatic import OPTIONS, match, with_multimask_heads  # noqa: E402

from resam_jax.config import SMALL_NWPU_SAM_CHECKPOINT  # noqa: E402
from resam_jax.inference.automatic import SamAutomaticMaskGenerator  # noqa: E402
from resam_jax.models.sam import load_sam  # noqa: E402
from weights_convert.convert_sam import main as convert_main  # noqa: E402
from weights_convert.export_sam import main as export_main  # noqa: E402


def generators(root: Path, options: dict):
    """(ours, the reference's) generator over the small SAM with multimask heads."""
    exported = root / "small.pth"
    assert (
        export_main(["--checkpoint", str(SMALL_NWPU_SAM_CHECKPOINT), "--output", str(exported)])
        == 0
    )
    state = with_multimask_heads(torch.load(exported, weights_only=True))
    torch.save(state, root / "multimask.pth")
    assert (
        convert_main(["--checkpoint", str(root / "multimask.pth"), "--output", str(root / "c")])
        == 0
    )
    model = load_sam(root / "c")
    reference = build_reference(model.config)
    reference.load_state_dict(state)
    reference.pixel_mean.zero_()
    reference.pixel_std.fill_(255.0)
    from segment_anything import SamAutomaticMaskGenerator as Reference

    return SamAutomaticMaskGenerator(model, "unit", **options), Reference(reference, **options)


def timed(generator, images: list[np.ndarray]) -> tuple[float, list[list[dict]]]:
    started = time.perf_counter()
    with torch.no_grad():
        results = [generator.generate(image) for image in images]
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nwpu-dir", type=Path, default=REPO.parent / "shared" / "data" / "NWPU")
    parser.add_argument("--images", nargs="+", default=["001.jpg", "050.jpg", "120.jpg"])
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--max-side", type=int, default=384)
    args = parser.parse_args()
    images = []
    for name in args.images:
        with Image.open(args.nwpu_dir / "Images" / name) as image:
            image = image.convert("RGB")
            image.thumbnail((args.max_side, args.max_side))
            images.append(np.asarray(image))
    options = dict(OPTIONS, points_per_side=args.points_per_side)
    with tempfile.TemporaryDirectory() as root:
        ours, reference = generators(Path(root), options)
    print(f"torch threads {torch.get_num_threads()}; options {options}")
    seconds = {}
    for name, generator in (("resam-jax", ours), ("segment-anything", reference)):
        timed(generator, images)  # compilation / first-call set-up
        seconds[name], results = timed(generator, images)
        if name == "resam-jax":
            our_results = results
        masks = sum(map(len, results))
        print(
            f"{name}: {masks} masks in {seconds[name]:.2f} s, {masks / seconds[name]:.2f} masks/s"
        )
    matched = [match(a, b) for a, b in zip(our_results, results)]
    expected = sum(map(len, results))
    print(
        f"matched one to one at IoU >= 0.95: {sum(m for m, _ in matched)}/{expected} reference "
        f"masks, {sum(e for _, e in matched)} extra; "
        f"resam-jax {seconds['segment-anything'] / seconds['resam-jax']:.2f}x faster"
    )


if __name__ == "__main__":
    main()
