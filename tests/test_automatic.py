"""resam_jax.inference.automatic against segment_anything's SamAutomaticMaskGenerator on the same
weights and real NWPU images: the same masks (one to one at IoU >= 0.95), and its parts (box NMS,
stability score, boxes, small-region removal) against the reference's own functions."""

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from sam_reference import build_reference
from scipy.optimize import linear_sum_assignment

from resam_jax.config import SMALL_NWPU_SAM_CHECKPOINT
from resam_jax.inference import automatic
from resam_jax.models.sam import load_sam

NWPU_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "NWPU" / "Images"
# Options at which the small SAM's masks meet every filter: about half of the candidates fall
# to each of predicted IoU, stability and box NMS.
OPTIONS = dict(
    points_per_side=16,
    pred_iou_thresh=0.15,
    stability_score_thresh=0.8,
    stability_score_offset=0.1,
    box_nms_thresh=0.7,
    output_mode="coco_rle",
)


def with_multimask_heads(state_dict: dict, seed: int = 0) -> dict:
    """The small SAM was trained single-mask (token 0), which the generator never reads: its three
    multimask outputs are untrained speckle over the whole image. Tokens 1..3 become token 0 moved
    by growing noise, with token 0's hypernetwork and IoU row (less 0.01 k, so that no two
    candidates of a point tie): three trained-looking candidates per point."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: v.clone() for k, v in state_dict.items()}
    tokens = state["mask_decoder.mask_tokens.weight"]
    for k in (1, 2, 3):
        noise = torch.randn(tokens[0].shape, generator=generator)
        tokens[k] = tokens[0] + 0.3 * k * tokens[0].std() * noise
        for name, value in state_dict.items():
            if name.startswith("mask_decoder.output_hypernetworks_mlps.0."):
                state[name.replace("mlps.0.", f"mlps.{k}.")] = value.clone()
    iou_weight = state["mask_decoder.iou_prediction_head.layers.2.weight"]
    iou_bias = state["mask_decoder.iou_prediction_head.layers.2.bias"]
    for k in (1, 2, 3):
        iou_weight[k], iou_bias[k] = iou_weight[0], iou_bias[0] - 0.01 * k
    return state


@pytest.fixture(scope="module")
def generators(tmp_path_factory):
    """(ours, the reference's) factories over one SAM: the packaged small SAM exported to .pth
    (with multimask heads), converted back for ours and loaded by segment-anything."""
    from weights_convert.convert_sam import main as convert_main
    from weights_convert.export_sam import main as export_main

    root = tmp_path_factory.mktemp("automatic")
    exported = root / "small.pth"
    assert (
        export_main(["--checkpoint", str(SMALL_NWPU_SAM_CHECKPOINT), "--output", str(exported)])
        == 0
    )
    state = with_multimask_heads(torch.load(exported, weights_only=True))
    torch.save(state, root / "multimask.pth")
    assert (
        convert_main(["--checkpoint", str(root / "multimask.pth"), "--output", str(root / "ckpt")])
        == 0
    )
    model = load_sam(root / "ckpt")
    reference = build_reference(model.config)
    reference.load_state_dict(state)
    reference.pixel_mean.zero_()  # the small SAM takes [0, 1] pixels
    reference.pixel_std.fill_(255.0)

    def make(**options):
        from segment_anything import SamAutomaticMaskGenerator as Reference

        return (
            automatic.SamAutomaticMaskGenerator(model, "unit", **options),
            Reference(reference, **options),
        )

    make.checkpoint = root / "ckpt"
    return make


def nwpu_image(name: str) -> np.ndarray:
    """A real NWPU image, its long side brought to the small SAM's 384 px (keeps CI time small)."""
    from PIL import Image

    path = NWPU_IMAGES / name
    if not path.is_file():
        pytest.skip(f"{path} is not here (NWPU VHR-10 in ../shared/data/NWPU)")
    with Image.open(path) as image:
        image = image.convert("RGB")
        image.thumbnail((384, 384))
        return np.asarray(image)


def as_rles(records: list[dict]) -> list[dict]:
    """The records' segmentations as pycocotools RLEs, whatever the output mode."""
    rles = []
    for r in records:
        s = r["segmentation"]
        if isinstance(s, np.ndarray):
            rles.append(mask_utils.encode(np.asfortranarray(s.astype(np.uint8))))
        elif isinstance(s["counts"], list):
            rles.append(mask_utils.frPyObjects(s, *s["size"]))
        else:
            rles.append(s)
    return rles


def match(ours: list[dict], reference: list[dict]) -> tuple[int, int]:
    """(reference masks matched one to one at mask IoU >= 0.95, our masks left unmatched)."""
    if not ours or not reference:
        return 0, len(ours)
    iou = mask_utils.iou(as_rles(ours), as_rles(reference), [0] * len(reference))
    rows, cols = linear_sum_assignment(-iou)
    matched = int((iou[rows, cols] >= 0.95).sum())
    return matched, len(ours) - matched


def assert_same_masks(ours: list[dict], reference: list[dict]) -> None:
    matched, extra = match(ours, reference)
    assert len(reference) >= 20, f"only {len(reference)} reference masks: the test would be weak"
    assert matched >= 0.95 * len(reference), (matched, len(reference), len(ours))
    assert extra <= 0.05 * len(reference), (extra, len(reference), len(ours))


@pytest.mark.parametrize("name", ["001.jpg", "050.jpg"])
def test_the_reference_masks_on_real_images(generators, name):
    image = nwpu_image(name)
    ours, reference = generators(**OPTIONS)
    expected, actual = reference.generate(image), ours.generate(image)
    assert_same_masks(actual, expected)
    # The records carry the reference's scores and boxes for the matched masks.
    by_point = {tuple(r["point_coords"][0]): r for r in expected}
    for record in actual:
        other = by_point.get(tuple(record["point_coords"][0]))
        if other is not None and other["bbox"] == record["bbox"]:
            assert abs(record["predicted_iou"] - other["predicted_iou"]) < 1e-4
            assert abs(record["stability_score"] - other["stability_score"]) < 1e-2
            assert record["area"] == pytest.approx(other["area"], rel=0.02)


def test_crops_and_small_regions_on_a_real_image(generators):
    """One crop layer (five crops, NMS across them preferring the smaller crop) and small-region
    removal (scipy here, OpenCV in the reference), in uncompressed RLE."""
    image = nwpu_image("120.jpg")
    options = dict(
        OPTIONS,
        points_per_side=8,
        crop_n_layers=1,
        min_mask_region_area=40,
        output_mode="uncompressed_rle",
    )
    ours, reference = generators(**options)
    expected, actual = reference.generate(image), ours.generate(image)
    assert {tuple(r["crop_box"]) for r in expected} == {tuple(r["crop_box"]) for r in actual}
    assert_same_masks(actual, expected)


def test_box_nms_is_torchvision_nms():
    from torchvision.ops import nms

    rng = np.random.default_rng(0)
    corners = rng.integers(0, 60, size=(300, 2, 2))
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    boxes[:20, 2:] = boxes[:20, :2]  # empty boxes: IoU 0 / 0
    scores = rng.integers(0, 12, size=300).astype(np.float32)  # many ties
    for threshold in (0.0, 0.3, 0.7, 0.95):
        expected = nms(torch.as_tensor(boxes).float(), torch.as_tensor(scores), threshold)
        np.testing.assert_array_equal(automatic.box_nms(boxes, scores, threshold), expected.numpy())


def test_stability_boxes_and_small_regions_are_the_references():
    from segment_anything.utils import amg

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 40, 50)).astype(np.float32)
    logits = logits + np.linspace(-3, 3, 50, dtype=np.float32)
    masks = logits > 0
    masks[2] = False
    expected = amg.calculate_stability_score(torch.as_tensor(logits), 0.0, 0.5).numpy()
    np.testing.assert_array_equal(np.asarray(automatic.stability_score(logits, 0.0, 0.5)), expected)
    np.testing.assert_array_equal(
        np.asarray(automatic.mask_boxes(masks)), amg.batched_mask_to_box(torch.as_tensor(masks))
    )
    for mask in masks:
        for mode in ("holes", "islands"):
            for area in (3, 30, 5000):
                ours, changed = automatic.remove_small_regions(mask, area, mode)
                theirs, their_changed = amg.remove_small_regions(mask, area, mode)
                assert changed == their_changed
                np.testing.assert_array_equal(ours, theirs)
    crop = [10, 0, 40, 30]
    boxes = amg.batched_mask_to_box(torch.as_tensor(masks))
    np.testing.assert_array_equal(
        automatic.near_crop_edge(boxes.numpy() + [10, 0, 10, 0], crop, [0, 0, 80, 30]),
        amg.is_box_near_crop_edge(boxes, crop, [0, 0, 80, 30]).numpy(),
    )
    for size, layers in (((600, 800), 2), ((333, 1000), 1)):
        assert automatic.crop_boxes(size, layers, 512 / 1500) == amg.generate_crop_boxes(
            size, layers, 512 / 1500
        )
    np.testing.assert_array_equal(automatic.point_grid(7), amg.build_point_grid(7))


def test_uncompressed_rle_is_the_references():
    from segment_anything.utils import amg

    rng = np.random.default_rng(2)
    for mask in (rng.random((13, 17)) > 0.5, np.ones((4, 5), bool), np.zeros((4, 5), bool)):
        expected = amg.mask_to_rle_pytorch(torch.as_tensor(mask)[None])[0]
        assert automatic.uncompressed_rle(mask) == expected


def test_options_are_checked():
    model = load_sam(SMALL_NWPU_SAM_CHECKPOINT)
    with pytest.raises(ValueError, match="output_mode"):
        automatic.SamAutomaticMaskGenerator(model, output_mode="png")
    with pytest.raises(ValueError, match="points_per_side"):
        automatic.SamAutomaticMaskGenerator(model, points_per_side=0)


# The converted .pth records no pixel input: the small SAM's is named.
CLI_OPTIONS = ["--pixel-norm", "unit", "--points-per-side", "8", "--pred-iou-thresh", "0.15"]
CLI_OPTIONS += ["--stability-score-thresh", "0.8", "--stability-score-offset", "0.1"]


def test_predict_everything_writes_the_generators_records(generators, tmp_path, capsys):
    import json

    from PIL import Image

    from resam_jax.inference.image import main as predict_main

    image = nwpu_image("001.jpg")
    Image.fromarray(image).save(tmp_path / "x.png")
    args = ["--checkpoint", generators.checkpoint, "--image", tmp_path / "x.png", "--everything"]
    args += [*CLI_OPTIONS, "--output", tmp_path / "masks.json", "--overlay", tmp_path / "o.png"]
    assert predict_main([str(a) for a in args]) == 0, capsys.readouterr().err
    records = json.loads((tmp_path / "masks.json").read_text())
    ours, _ = generators(**dict(OPTIONS, points_per_side=8))
    expected = ours.generate(image)
    assert len(records) == len(expected) > 0
    for record, other in zip(records, expected):
        assert record["segmentation"] == other["segmentation"]
        assert record["score"] == record["predicted_iou"] == other["predicted_iou"]
        assert record["stability_score"] == other["stability_score"]
    assert (tmp_path / "o.png").is_file()


def test_predict_scene_everything_writes_labels_and_polygons(generators, tmp_path, capsys):
    """A GeoTIFF scene in 2 x 2 tiles: instance labels and one polygon per instance, with the
    generator's scores and instances from several tiles."""
    import json

    import rasterio
    from rasterio.transform import from_origin

    from resam_jax.inference.scene import main as scene_main

    image = nwpu_image("001.jpg")  # 384 x 324: 2 x 2 tiles of 256
    height, width = image.shape[:2]
    scene = tmp_path / "scene.tif"
    with rasterio.open(
        scene, "w", driver="GTiff", width=width, height=height, count=3, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500000, 4000000, 0.5, 0.5),
    ) as dataset:  # fmt: skip
        dataset.write(np.moveaxis(image, -1, 0))
    args = ["--checkpoint", generators.checkpoint, "--image", scene, "--everything", *CLI_OPTIONS]
    args += ["--tile-size", "256", "--overlap", "128"]
    args += ["--output", tmp_path / "labels.tif", "--vectors", tmp_path / "instances.geojson"]
    assert scene_main([str(a) for a in args]) == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert summary["tiles"] == 4 and summary["instances"] > 10, summary
    with rasterio.open(tmp_path / "labels.tif") as labels:
        assert labels.crs.to_epsg() == 32633 and labels.transform == dataset.transform
        pixels = labels.read(1)
    features = json.loads((tmp_path / "instances.geojson").read_text())["features"]
    assert len(features) == summary["instances"]
    for label, feature in enumerate(features, start=1):
        properties = feature["properties"]
        assert properties["label"] == label and properties["pixels"] == (pixels == label).sum()
        assert properties["predicted_iou"] > 0.15 and properties["stability_score"] >= 0.8
    origins = np.array([f["properties"]["tile"] for f in features])
    assert len(np.unique(origins, axis=0)) > 1, "all instances from one tile"
    # Masks found by two tiles were merged: box NMS across the instances drops none.
    boxes = np.array([f["properties"]["box"] for f in features])
    scores = np.array([f["properties"]["predicted_iou"] for f in features])
    assert len(automatic.box_nms(boxes, scores, 0.7)) == len(features)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--points-per-side", "0"], "--points-per-side must be at least 1"),
        (["--output-nothing"], None),
    ],
)
def test_bad_everything_input_is_one_error_line(tmp_path, capsys, flags, fragment):
    from resam_jax.inference.image import main as predict_main

    if fragment is None:  # a missing image
        args = ["--image", tmp_path / "none.png"]
        fragment = "none.png does not exist"
    else:
        from PIL import Image

        Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
        args = ["--image", tmp_path / "x.png", *flags]
    args = ["--checkpoint", SMALL_NWPU_SAM_CHECKPOINT, *args, "--everything"]
    assert predict_main([str(a) for a in args + ["--output", tmp_path / "m.json"]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "m.json").exists()
