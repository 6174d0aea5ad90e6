"""python -m resam_jax.predict --images DIR --prompts prompts.json: COCO results that pycocotools
reads, masks equal to the predictor's, the evaluation table, and every refusal."""

import contextlib
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from resam_jax.config import DEMO_SAM_CHECKPOINT, SMALL_NWPU_SAM_CHECKPOINT
from resam_jax.inference.folder import _quiet_coco
from resam_jax.inference.image import main as predict_main

SIZES = {"a.png": (150, 230), "b.jpg": (200, 120)}  # (height, width)
PROMPTS = {
    "images": [
        {"id": 1, "file_name": "a.png", "height": 150, "width": 230},
        {"id": 2, "file_name": "b.jpg"},
        {"id": 3, "file_name": "unprompted.png"},  # no annotation: never read
    ],
    "annotations": [
        {"id": 10, "image_id": 1, "bbox": [20, 30, 130, 90], "category_id": 2},
        {"id": 11, "image_id": 1, "point": [40, 60]},
        {"id": 12, "image_id": 2, "points": [[30, 50], [100, 180]], "point_labels": [1, 0]},
        {"id": 13, "image_id": 2, "points": [[60, 90]], "bbox": [10, 40, 90, 120]},
    ],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        pixels[h // 4 : h // 2, w // 4 : w // 2] = 255  # something for SAM to find
        Image.fromarray(pixels).save(root / name)
    (root / "prompts.json").write_text(json.dumps(PROMPTS))
    return root


def run(*args) -> tuple[int, str]:
    """The CLI in this process (argparse's exit code included), with its stdout and stderr."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = predict_main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue()


@pytest.fixture(scope="module")
def results(folder):
    output = folder / "out" / "results.json"
    code, log = run(
        "--checkpoint", DEMO_SAM_CHECKPOINT, "--images", folder, "--prompts",
        folder / "prompts.json", "--output", output,
    )  # fmt: skip
    assert code == 0, log
    return json.loads(output.read_text()), output


def ground_truth_with(masks: dict[int, np.ndarray]) -> dict:
    """The prompt file as a COCO instances file whose annotation `id` has the mask masks[id]."""
    gt = json.loads(json.dumps(PROMPTS))
    for image in gt["images"]:
        image["height"], image["width"] = SIZES.get(image["file_name"], (10, 10))
    for annotation in gt["annotations"]:
        rle = mask_utils.encode(np.asfortranarray(masks[annotation["id"]].astype(np.uint8)))
        annotation.update(segmentation={"size": rle["size"], "counts": rle["counts"].decode()})
        annotation.update(area=float(mask_utils.area(rle)), iscrowd=0)
        annotation.setdefault("category_id", 1)
    gt["categories"] = [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}]
    return gt


def test_results_are_coco_and_equal_the_predictors_masks(folder, results):
    from resam_jax.inference.predictor import SamPredictor
    from resam_jax.models.sam import load_sam

    entries, output = results
    assert [r["prompt_id"] for r in entries] == [10, 11, 12, 13]
    assert [r["category_id"] for r in entries] == [2, 1, 1, 1]
    predicted = {r["prompt_id"]: mask_utils.decode(r["segmentation"]) for r in entries}
    coco = _quiet_coco(ground_truth_with(predicted))
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = coco.loadRes(str(output))
    assert len(loaded.anns) == 4

    predictor = SamPredictor(load_sam(DEMO_SAM_CHECKPOINT))
    for image_id, name in ((1, "a.png"), (2, "b.jpg")):
        predictor.set_image(np.asarray(Image.open(folder / name).convert("RGB")))
        for annotation in PROMPTS["annotations"]:
            if annotation["image_id"] != image_id:
                continue
            points = annotation.get(
                "points", [annotation["point"]] if "point" in annotation else None
            )
            labels = annotation.get("point_labels", [1] * len(points)) if points else None
            box = None
            if "bbox" in annotation:
                x, y, w, h = annotation["bbox"]
                box = np.array([x, y, x + w, y + h])
            masks, iou, _ = predictor.predict(
                None if points is None else np.array(points, np.float32),
                None if labels is None else np.array(labels),
                box,
                multimask_output=False,
            )
            entry = next(r for r in entries if r["prompt_id"] == annotation["id"])
            assert masks[0].any(), annotation
            np.testing.assert_array_equal(predicted[annotation["id"]], masks[0])
            assert entry["score"] == pytest.approx(float(iou[0]), abs=1e-6)


def test_ground_truth_gives_the_evaluation_table(folder, results, tmp_path):
    entries, _ = results
    predicted = {r["prompt_id"]: mask_utils.decode(r["segmentation"]) > 0 for r in entries}
    (tmp_path / "same.json").write_text(json.dumps(ground_truth_with(predicted)))
    # The GT of image 1's box prompt is half the predicted mask: IoU 0.5 on that instance.
    halved = dict(predicted)
    rows = np.flatnonzero(halved[10].any(axis=1))
    halved[10] = halved[10].copy()
    halved[10][rows[: len(rows) // 2]] = False
    kept = halved[10].sum() / predicted[10].sum()
    (tmp_path / "halved.json").write_text(json.dumps(ground_truth_with(halved)))
    ious = []
    for gt in ("same.json", "halved.json"):
        code, log = run(
            "--checkpoint", DEMO_SAM_CHECKPOINT, "--images", folder, "--prompts",
            folder / "prompts.json", "--output", tmp_path / "r.json", "--ground-truth", tmp_path / gt,
        )  # fmt: skip
        assert code == 0, log
        row = log.splitlines()[-1].split()
        assert row[0] == "prompts.json" and row[1] == "2", log
        ious.append(float(row[2]))
    # Image 1 has two instances, image 2 two: the halved one moves the mean by (1 - kept) / 4.
    assert ious[0] == pytest.approx(100.0)
    assert ious[1] == pytest.approx(100 * (1 - (1 - kept) / 4), abs=0.01)


def test_real_nwpu_images_with_the_small_sam(nwpu_dir, tmp_path):
    gt = json.loads((nwpu_dir / "Annotations" / "NWPU_instances_val.json").read_text())
    images = gt["images"][:2]
    ids = {image["id"] for image in images}
    gt = {
        **gt,
        "images": images,
        "annotations": [a for a in gt["annotations"] if a["image_id"] in ids],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    code, log = run(
        "--checkpoint", SMALL_NWPU_SAM_CHECKPOINT, "--images", nwpu_dir / "Images",
        "--prompts", tmp_path / "gt.json", "--ground-truth", tmp_path / "gt.json",
        "--output", tmp_path / "results.json",
    )  # fmt: skip
    assert code == 0, log
    coco = _quiet_coco(gt)
    with contextlib.redirect_stdout(io.StringIO()):
        loaded = coco.loadRes(str(tmp_path / "results.json"))
    assert len(loaded.anns) == len(gt["annotations"])
    iou = float(log.splitlines()[-1].split()[2])
    assert 10 < iou <= 100, log  # box prompts on the pretrained small SAM find the objects


def test_pixel_input_defaults_to_the_checkpoints_record():
    from resam_jax.inference.image import _load_predictor

    assert _load_predictor(SMALL_NWPU_SAM_CHECKPOINT, "auto").pixel_norm == "unit"
    assert _load_predictor(DEMO_SAM_CHECKPOINT, "auto").pixel_norm == "sam"  # no record
    assert _load_predictor(SMALL_NWPU_SAM_CHECKPOINT, "sam").pixel_norm == "sam"


def with_changes(change) -> dict:
    prompts = json.loads(json.dumps(PROMPTS))
    change(prompts)
    return prompts


BAD_PROMPTS = {
    "missing-image": (
        lambda p: p["images"][1].update(file_name="gone.jpg"),
        "file_name 'gone.jpg' is not in",
    ),
    "missing-field": (
        lambda p: p["annotations"][2].pop("image_id"),
        "annotations[2]: field 'image_id' must be an integer, got missing",
    ),
    "no-prompt": (lambda p: p["annotations"][0].pop("bbox"), "annotations[0] has no prompt"),
    "short-bbox": (
        lambda p: p["annotations"][0].update(bbox=[1, 2, 3]),
        "field 'bbox' must be [x, y, width, height]",
    ),
    "bad-labels": (
        lambda p: p["annotations"][2].update(point_labels=[1]),
        "field 'point_labels' must list 2 labels",
    ),
    "point-outside": (
        lambda p: p["annotations"][1].update(point=[400, 60]),
        "annotations[1] (id 11): point (400, 60) lies outside the image",
    ),
    "box-outside": (
        lambda p: p["annotations"][3].update(bbox=[10, 40, 90, 300]),
        "annotations[3] (id 13): bbox corner (100, 340) lies outside the image",
    ),
    "unknown-image": (
        lambda p: p["annotations"][0].update(image_id=9),
        "image_id 9 is not in 'images'",
    ),
    "size-mismatch": (lambda p: p["images"][0].update(width=231), "the file says width 231"),
    "duplicate-id": (lambda p: p["annotations"][1].update(id=10), "id 10 appears twice"),
    "not-coco": (lambda p: p.pop("annotations"), "field 'annotations' must be a list"),
}


@pytest.mark.parametrize("case", list(BAD_PROMPTS))
def test_bad_prompts_are_refused_in_one_line(folder, tmp_path, case):
    change, message = BAD_PROMPTS[case]
    (tmp_path / "prompts.json").write_text(json.dumps(with_changes(change)))
    output = tmp_path / "results.json"
    code, log = run(
        "--checkpoint", DEMO_SAM_CHECKPOINT, "--images", folder, "--prompts",
        tmp_path / "prompts.json", "--output", output,
    )  # fmt: skip
    assert code == 2 and "Traceback" not in log, log
    assert log.startswith("error: ") and log.count("\n") == 1, log
    assert message in log and "prompts.json" in log, log
    assert list(tmp_path.iterdir()) == [tmp_path / "prompts.json"]


def test_malformed_json_and_corrupt_image(folder, tmp_path):
    (tmp_path / "prompts.json").write_text('{"images": [')
    code, log = run(
        "--checkpoint", DEMO_SAM_CHECKPOINT, "--images", folder, "--prompts",
        tmp_path / "prompts.json", "--output", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 2 and "is not valid JSON: " in log and "line 1" in log, log
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"\x89PNG not really")
    (images / "b.jpg").write_bytes((folder / "b.jpg").read_bytes())
    code, log = run(
        "--checkpoint", DEMO_SAM_CHECKPOINT, "--images", images, "--prompts",
        folder / "prompts.json", "--output", tmp_path / "r.json",
    )  # fmt: skip
    assert code == 2 and f"cannot decode image {images / 'a.png'}" in log, log
    assert not (tmp_path / "r.json").exists()


def drop_annotation_13(gt):
    gt["annotations"] = gt["annotations"][:3]


def two_point_polygon(gt):
    gt["annotations"][1]["segmentation"] = [[1, 2, 3, 4]]


@pytest.mark.parametrize(
    "change,message",
    [
        (drop_annotation_13, "no annotation with id 13 on image id 2"),
        (two_point_polygon, "annotation id 11: field 'segmentation': polygon 0 has 2 points"),
    ],
    ids=["missing-annotation", "bad-segmentation"],
)
def test_ground_truth_must_hold_the_prompted_annotations(
    folder, results, tmp_path, change, message
):
    entries, _ = results
    gt = ground_truth_with({r["prompt_id"]: mask_utils.decode(r["segmentation"]) for r in entries})
    change(gt)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    code, log = run(
        "--checkpoint", DEMO_SAM_CHECKPOINT, "--images", folder, "--prompts",
        folder / "prompts.json", "--output", tmp_path / "r.json", "--ground-truth", tmp_path / "gt.json",
    )  # fmt: skip
    assert code == 2 and message in log and str(tmp_path / "gt.json") in log, log
    assert not (tmp_path / "r.json").exists()


def test_flag_combinations_and_exit_code_from_the_shell(folder, tmp_path):
    code, log = run(
        "--checkpoint", DEMO_SAM_CHECKPOINT, "--images", folder, "--output", tmp_path / "r.json"
    )
    assert code == 2 and "--images needs --prompts" in log, log
    result = subprocess.run(
        [sys.executable, "-m", "resam_jax.predict", "--checkpoint", str(DEMO_SAM_CHECKPOINT),
         "--images", str(tmp_path / "nowhere"), "--prompts", str(folder / "prompts.json"),
         "--output", str(tmp_path / "r.json")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr == f"error: --images {tmp_path / 'nowhere'} is not a folder\n"


def test_multimask_keeps_the_mask_with_the_best_predicted_iou(folder):
    from resam_jax.inference.folder import ImagePrompts, Prompt, predict_images

    class ThreeMasks:
        def set_image(self, image):
            self.shape = image.shape[:2]

        def predict(self, points, labels, box, multimask_output):
            assert multimask_output
            masks = np.zeros((3, *self.shape), bool)
            masks[1, :5] = True
            return masks, np.array([0.1, 0.9, 0.5], np.float32), None

    prompt = Prompt(id=4, category_id=1, points=None, labels=None, box=np.zeros(4, np.float32))
    image = ImagePrompts(id=1, path=folder / "a.png", size=SIZES["a.png"], prompts=(prompt,))
    (result,) = predict_images(ThreeMasks(), [image], multimask=True)
    assert result["score"] == pytest.approx(0.9)
    assert mask_utils.decode(result["segmentation"])[:5].all()
    assert mask_utils.area(result["segmentation"]) == 5 * SIZES["a.png"][1]
