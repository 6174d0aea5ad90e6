"""TFDS builders and the prepare CLI on synthetic releases in each published layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from data_fixtures import (
    ImageSpec,
    hrsid_release,
    nwpu_release,
    whu_release,
    write_image,
    write_split,
)
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from resam_jax.data import prepare as prepare_cli
from resam_jax.data.builders import load_prepared
from resam_jax.data.coco import DataError
from resam_jax.data.prepare import prepare

# pycocotools 2.0 with numpy 2 warns on every decode; nothing this project can change.


def _skipped(data_dir: Path, dataset: str, config: str, split: str) -> list[dict]:
    return load_prepared(data_dir, dataset, config).info.metadata["splits"][split]["skipped"]


def assert_matches_coco(
    data_dir: Path, dataset: str, config: str, split: str, annotation_file: Path
) -> int:
    """Every stored instance equals pycocotools' annToMask and the clipped annotation bbox."""
    coco = COCO()
    coco.dataset = json.loads(annotation_file.read_text())
    # pycocotools itself cannot index an image entry without an id (one broken fixture has one).
    coco.dataset["images"] = [image for image in coco.dataset["images"] if "id" in image]
    coco.createIndex()
    source = load_prepared(data_dir, dataset, config).as_data_source(split)
    checked = 0
    for example in source:
        height, width = example["image"].shape[:2]
        assert example["image"].shape[2] == 3
        instances = example["instances"]
        for rle, ann_id, bbox in zip(
            instances["mask_rle"], instances["annotation_id"], instances["bbox"], strict=True
        ):
            ann = coco.anns[int(ann_id)]
            mask = mask_utils.decode({"size": [height, width], "counts": rle})
            np.testing.assert_array_equal(mask, coco.annToMask(ann))
            # Without a bbox in the file, the box is the mask's tight box.
            x, y, w, h = ann["bbox"] if "bbox" in ann else mask_utils.toBbox(coco.annToRLE(ann))
            np.testing.assert_allclose(
                bbox, [max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)]
            )
            checked += 1
    return checked


def test_nwpu_layout_builds_with_counts_masks_and_pixels(tmp_path):
    manual = nwpu_release(tmp_path / "release")
    result = prepare("nwpu_vhr10", manual_dir=manual, data_dir=tmp_path / "tfds")
    assert {
        s: (v["images"], v["instances"], v["skipped"]["total"]) for s, v in result["splits"].items()
    } == {
        "train": (4, 13, 0),
        "val": (2, 3, 0),
    }
    for split in ("train", "val"):
        checked = assert_matches_coco(
            tmp_path / "tfds",
            "nwpu_vhr10",
            "default",
            split,
            manual / f"Annotations/NWPU_instances_{split}.json",
        )
        assert checked == result["splits"][split]["instances"]
    # Released JPEG/PNG bytes are stored as they are: decoding gives the file's own pixels.
    source = load_prepared(tmp_path / "tfds", "nwpu_vhr10", "default").as_data_source("train")
    by_name = {ex["file_name"].decode(): ex["image"] for ex in source}
    for name, pixels in by_name.items():
        np.testing.assert_array_equal(
            pixels, np.asarray(PIL.Image.open(manual / "Images" / name).convert("RGB"))
        )


def test_parent_of_release_is_accepted_as_manual_dir(tmp_path):
    nwpu_release(tmp_path / "data")
    result = prepare("nwpu_vhr10", manual_dir=tmp_path / "data", data_dir=tmp_path / "tfds")
    assert result["splits"]["train"]["images"] == 4


def _broken_nwpu(root: Path) -> Path:
    base = nwpu_release(root)
    images = base / "Images"
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    write_image(images / "empty.jpg", ImageSpec(12, 30, 30))
    write_image(images / "mismatch.jpg", ImageSpec(13, 60, 80))
    write_image(images / "deep.png", ImageSpec(14, 30, 30, image_format="PNG", mode="I;16"))
    square = [[5.0, 5.0, 20.0, 5.0, 20.0, 20.0, 5.0, 20.0]]
    rle_mask = np.zeros((50, 50), np.uint8, order="F")
    rle_mask[35:45, 35:48] = 1
    compressed = mask_utils.encode(rle_mask)
    uncompressed_counts = (
        [35 * 50 + 35, 10]
        + sum(([40, 10] for _ in range(12)), [])
        + [50 * 50 - 35 * 50 - 35 - 10 - 12 * 50]
    )
    good = dict(image_id=1, segmentation=square, bbox=[5.0, 5.0, 15.0, 15.0])
    spec4_obj = [[86.0, 30.0, 96.0, 30.0, 96.0, 39.0, 86.0, 39.0]]
    extra_images = [
        {"id": 10, "file_name": "missing.jpg", "height": 30, "width": 30},
        {"id": 11, "file_name": "corrupt.jpg", "height": 30, "width": 30},
        {"id": 12, "file_name": "empty.jpg", "height": 30, "width": 30},
        {"id": 13, "file_name": "mismatch.jpg", "height": 50, "width": 50},
        {"id": 1, "file_name": "001.jpg", "height": 60, "width": 80},
        {"id": 14, "file_name": "deep.png", "height": 30, "width": 30},
        {"file_name": "no_id.jpg"},
    ]
    extra_annotations = [
        dict(good, image_id=10),  # on the missing image
        dict(good, segmentation=[[5.0, 5.0, 20.0, 5.0]]),  # 2 points
        dict(good, segmentation=[[5.0, 5.0, 20.0, 5.0, 20.0]]),  # odd count
        dict(good, segmentation=[[5.0, float("nan"), 20.0, 5.0, 20.0, 20.0]]),
        dict(good, image_id=999),
        dict(good, bbox=[500.0, 5.0, 15.0, 15.0]),  # far outside the 80-wide image
        dict(good, bbox=[5.0, 5.0, 0.0, 15.0]),
        dict(good, iscrowd=1),
        dict(
            image_id=4, segmentation=spec4_obj, bbox=[86.0, 30.0, 11.0, 9.0]
        ),  # 1 px over: clipped
        dict(
            image_id=3,
            segmentation={"size": [50, 50], "counts": compressed["counts"].decode()},
            bbox=[35.0, 35.0, 13.0, 10.0],
        ),
        dict(
            image_id=3,
            segmentation={"size": [50, 50], "counts": uncompressed_counts},
            bbox=[35.0, 35.0, 12.0, 10.0],
        ),
        dict(
            image_id=3,
            segmentation={"size": [40, 50], "counts": [1785, 10, 205]},
            bbox=[35.0, 35.0, 12.0, 10.0],
        ),
        dict(
            image_id=3,
            segmentation={"size": [50, 50], "counts": [10, 20]},
            bbox=[35.0, 35.0, 12.0, 10.0],
        ),
        dict(good, image_id=11),
        dict(good, image_id=13),
        dict(
            image_id=4, segmentation=[[40.0, 5.0, 60.0, 5.0, 50.0, 20.0]]
        ),  # no bbox: taken from the mask
    ]
    data = json.loads((base / "Annotations/NWPU_instances_train.json").read_text())
    start = len(data["annotations"])
    for i, extra in enumerate(extra_annotations):
        data["annotations"].append({"id": start + i + 1, "iscrowd": 0, "category_id": 1, **extra})
    data["images"].extend(extra_images)
    (base / "Annotations/NWPU_instances_train.json").write_text(json.dumps(data))
    return base


def test_every_bad_entry_is_skipped_and_reported(tmp_path):
    manual = _broken_nwpu(tmp_path / "release")
    result = prepare("nwpu_vhr10", manual_dir=manual, data_dir=tmp_path / "tfds")
    train = result["splits"]["train"]
    # 13 clean instances + the clipped bbox + the compressed and the uncompressed RLE + no bbox.
    assert (train["images"], train["instances"]) == (4, 17)
    counts = {kind: v["count"] for kind, v in train["skipped"]["by_reason"].items()}
    assert counts == {
        "image file not found": 1,
        "image does not decode": 1,
        "image has no instances": 1,
        "image size mismatch": 1,
        "duplicate image id": 1,
        "unsupported pixel format": 1,
        "malformed image entry": 1,
        "image skipped": 3,  # annotations on the missing, corrupt and mismatched images
        "bad segmentation": 5,
        "missing image": 1,
        "bbox outside the image": 1,
        "bad bbox": 1,
        "crowd annotation": 1,
    }
    assert train["skipped"]["total"] == sum(counts.values())
    skipped = _skipped(tmp_path / "tfds", "nwpu_vhr10", "default", "train")
    annotation_file = str(manual / "Annotations/NWPU_instances_train.json")
    assert all(s["file"] == annotation_file for s in skipped)
    reasons = {s["entry"]: s["reason"] for s in skipped}
    n = 13  # annotation ids of the extras start after the 13 clean ones
    assert "has 2 points; at least 3 are needed" in reasons[f"annotations[{n + 1}] (id {n + 2})"]
    assert "odd number (5)" in reasons[f"annotations[{n + 2}] (id {n + 3})"]
    assert "'image_id' 999" in reasons[f"annotations[{n + 4}] (id {n + 5})"]
    assert "extends 435 px beyond the 80x60 image" in reasons[f"annotations[{n + 5}] (id {n + 6})"]
    assert "RLE size [40, 50] differs" in reasons[f"annotations[{n + 11}] (id {n + 12})"]
    assert (
        "sum to 30, expected height*width = 2500" in reasons[f"annotations[{n + 12}] (id {n + 13})"]
    )
    assert "corrupt.jpg" in reasons["images[5] (id 11, corrupt.jpg)"]
    assert "60x80, the JSON says 50x50" in reasons["images[7] (id 13, mismatch.jpg)"]
    assert "already used by images[0] (id 1, 001.jpg)" in reasons["images[8] (id 1)"]
    assert "mode I;16" in reasons["images[9] (id 14, deep.png)"]
    assert "'id' must be an integer" in reasons["images[10]"]
    assert_matches_coco(tmp_path / "tfds", "nwpu_vhr10", "default", "train", Path(annotation_file))


def _run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = prepare_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_prepare_cli_prints_one_json_object_and_is_a_noop_when_built(tmp_path, capsys):
    manual = nwpu_release(tmp_path / "release")
    argv = ["--dataset", "nwpu_vhr10", "--manual-dir", manual, "--data-dir", tmp_path / "tfds"]
    code, out, _ = _run_cli(capsys, *argv)
    first = json.loads(out)
    assert code == 0 and first["built_now"] is True
    assert first["splits"]["val"] == {
        "annotation_file": str(manual / "Annotations/NWPU_instances_val.json"),
        "images": 2,
        "instances": 3,
        "skipped": {"total": 0, "by_reason": {}},
    }
    code, out, _ = _run_cli(capsys, *argv)
    second = json.loads(out)
    assert code == 0 and second["built_now"] is False and second["splits"] == first["splits"]


@pytest.mark.parametrize("change", ["edit_annotations", "other_folder", "remove_image"])
def test_prepare_refuses_a_build_from_other_files_and_rebuilds_on_request(tmp_path, capsys, change):
    manual = nwpu_release(tmp_path / "release")
    data_dir = tmp_path / "tfds"
    argv = ["--dataset", "nwpu_vhr10", "--manual-dir", manual, "--data-dir", data_dir]
    assert _run_cli(capsys, *argv)[0] == 0
    val = manual / "Annotations/NWPU_instances_val.json"
    if change == "edit_annotations":
        coco = json.loads(val.read_text())
        coco["annotations"] = coco["annotations"][:1]
        val.write_text(json.dumps(coco))
        expected_val = 1
    elif change == "other_folder":
        manual = nwpu_release(tmp_path / "other")
        argv[3] = manual
        expected_val = 3
    else:  # an image of the TRAIN split removed: the image listing changes
        (manual / "Images" / "002.jpg").unlink()
        expected_val = 3
    code, out, err = _run_cli(capsys, *argv)
    assert code == 2 and out == "" and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: nwpu_vhr10/default in ") and "was built from other files" in line
    assert line.endswith(f"--data-dir {data_dir.resolve()} --rebuild")
    # The refusal leaves the old build as it was; --rebuild replaces it.
    assert json.loads(_run_cli(capsys, *argv[:2], "--data-dir", data_dir)[1])["built_now"] is False
    code, out, _ = _run_cli(capsys, *argv, "--rebuild")
    assert code == 0 and json.loads(out)["built_now"] is True
    assert json.loads(out)["splits"]["val"]["instances"] == expected_val
    code, out, _ = _run_cli(capsys, *argv)
    assert code == 0 and json.loads(out)["built_now"] is False
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".rebuild_")]


def test_a_failed_rebuild_keeps_the_old_build(tmp_path, capsys):
    manual = nwpu_release(tmp_path / "release")
    argv = ["--dataset", "nwpu_vhr10", "--manual-dir", manual, "--data-dir", tmp_path / "tfds"]
    first = json.loads(_run_cli(capsys, *argv)[1])
    val = manual / "Annotations/NWPU_instances_val.json"
    good = val.read_text()
    val.write_text(good[:-40])
    code, _, err = _run_cli(capsys, *argv, "--rebuild")
    assert code == 2 and "is not valid JSON" in err
    val.write_text(good)
    second = json.loads(_run_cli(capsys, *argv)[1])
    assert second["built_now"] is False and second["splits"] == first["splits"]
    assert not [p for p in (tmp_path / "tfds").iterdir() if p.name.startswith(".rebuild_")]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (
            "missing_manual_dir",
            "manual dir {manual} does not exist; it should hold the NWPU VHR-10 release: "
            "{manual}/Annotations/NWPU_instances_train.json",
        ),
        (
            "wrong_layout",
            "expected {manual}/Annotations/NWPU_instances_train.json or {manual}/NWPU/Annotations",
        ),
        (
            "corrupt_json",
            "NWPU_instances_val.json is not valid JSON: Expecting ':' delimiter at line 1, column",
        ),
        (
            "no_annotations_field",
            "NWPU_instances_val.json: field 'annotations' must be a list of COCO entries, found missing",
        ),
        (
            "missing_split_file",
            "split 'val': expected the annotation file {manual}/Annotations/NWPU_instances_val.json",
        ),
        ("missing_image_dir", "expected the image folder {manual}/Images"),
        (
            "empty_split",
            "split 'val' has no usable image (2 x image file not found, 3 x image skipped)",
        ),
    ],
)
def test_prepare_cli_fails_clearly_on_unusable_input(tmp_path, capsys, setup, expected):
    manual = tmp_path / "release" / "NWPU"
    if setup != "missing_manual_dir":
        nwpu_release(tmp_path / "release")
    val = manual / "Annotations/NWPU_instances_val.json"
    if setup == "wrong_layout":
        for f in (manual / "Annotations").iterdir():
            f.unlink()
        (manual / "Annotations").rmdir()
    elif setup == "corrupt_json":
        val.write_text(val.read_text()[:-40])
    elif setup == "no_annotations_field":
        val.write_text(json.dumps({"images": []}))
    elif setup == "missing_split_file":
        val.unlink()
    elif setup == "missing_image_dir":
        (manual / "Images").rename(manual / "images_elsewhere")
    elif setup == "empty_split":
        for name in ("005.jpg", "006.jpg"):
            (manual / "Images" / name).unlink()
    code, out, err = _run_cli(
        capsys, "--dataset", "nwpu_vhr10", "--manual-dir", manual, "--data-dir", tmp_path / "tfds"
    )
    assert code == 2 and out == ""
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "Traceback" not in err
    assert expected.format(manual=manual) in last_line
    assert not (tmp_path / "tfds" / "nwpu_vhr10" / "default" / "1.0.0").exists()


def test_hrsid_inshore_quirks(tmp_path):
    manual = hrsid_release(tmp_path / "release", "inshore")
    result = prepare("hrsid", config="inshore", manual_dir=manual, data_dir=tmp_path / "tfds")
    assert {s: (v["images"], v["instances"]) for s, v in result["splits"].items()} == {
        "train": (3, 6),
        "test": (2, 4),
    }
    for split, num_good, bad in (("train", 3, (351, 375, 376)), ("test", 2, (166,))):
        skipped = _skipped(tmp_path / "tfds", "hrsid", "inshore", split)
        known_bad = [s for s in skipped if s["reason"].startswith("known-bad image")]
        expected = {
            f"images[{num_good + i}] (id {image_id}, P{image_id:04d}.jpg)"
            for i, image_id in enumerate(bad)
        }
        assert {s["entry"] for s in known_bad} == expected
        # Their annotations (2 each) are reported as belonging to a skipped image.
        assert len(skipped) == 3 * len(bad)
        assert all(
            s["reason"].startswith("image skipped: images[") for s in skipped if s not in known_bad
        )
        # .jpg names resolve to the released grey .png files, stored as RGB; category 0 is an instance.
        for example in load_prepared(tmp_path / "tfds", "hrsid", "inshore").as_data_source(split):
            assert example["file_name"].decode().endswith(".jpg")
            assert example["image"].shape == (40, 40, 3)
            assert list(example["instances"]["category_id"]) == [0, 0]
        assert_matches_coco(
            tmp_path / "tfds",
            "hrsid",
            "inshore",
            split,
            manual / f"Annotations/inshore/inshore_{split}.json",
        )


def test_hrsid_offshore_keeps_the_inshore_bad_ids(tmp_path):
    manual = hrsid_release(tmp_path / "release", "offshore")
    result = prepare("hrsid", config="offshore", manual_dir=manual, data_dir=tmp_path / "tfds")
    assert (result["splits"]["train"]["images"], result["splits"]["test"]["images"]) == (6, 3)


@pytest.mark.parametrize("image_root", ["images/{split}/image", "{split}/image"])
def test_whu_skips_empty_tiles(tmp_path, image_root):
    manual = whu_release(tmp_path / "release", image_root)
    result = prepare("whu_building", manual_dir=manual, data_dir=tmp_path / "tfds")
    for split in ("train", "val", "test"):
        summary = result["splits"][split]
        assert (summary["images"], summary["instances"]) == (2, 4)
        assert list(summary["skipped"]["by_reason"]) == ["image has no instances"]
        assert_matches_coco(
            tmp_path / "tfds",
            "whu_building",
            "default",
            split,
            manual / f"annotations/WHU_building_{split}.json",
        )


def test_coco_instances_with_user_paths(tmp_path, capsys):
    root = tmp_path / "mine"
    write_split(
        root / "pictures", root / "labels/a.json", [ImageSpec(7, 30, 40, [(2.0, 2.0, 20.0, 20.0)])]
    )
    write_split(
        root / "pictures",
        root / "labels/b.json",
        [ImageSpec(8, 30, 40, [(5.0, 5.0, 25.0, 15.0)] * 2)],
    )
    code, out, err = _run_cli(
        capsys,
        "--dataset",
        "coco_instances",
        "--config",
        "mine",
        "--manual-dir",
        root,
        "--data-dir",
        tmp_path / "tfds",
        "--annotations",
        "train=labels/a.json",
        "--annotations",
        "holdout=labels/b.json",
        "--images",
        "pictures",
    )
    assert code == 0, err
    splits = json.loads(out)["splits"]
    assert {s: (v["images"], v["instances"]) for s, v in splits.items()} == {
        "train": (1, 1),
        "holdout": (1, 2),
    }
    assert_matches_coco(
        tmp_path / "tfds", "coco_instances", "mine", "holdout", root / "labels/b.json"
    )


def test_coco_instances_rejects_a_predefined_config_name_for_user_paths(tmp_path):
    with pytest.raises(DataError, match="needs a new --config name"):
        prepare(
            "coco_instances",
            config="default",
            manual_dir=tmp_path,
            data_dir=tmp_path,
            annotations={"train": "a.json"},
        )
