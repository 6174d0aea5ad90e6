"""prepare --dataset whu_building on the official WHU release: image tiles with 0/255 label
tiles, whose 8-connected components of at least MIN_COMPONENT_AREA pixels are the instances."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from pycocotools import mask as mask_utils

from resam_jax.data import prepare as prepare_cli
from resam_jax.data.builders import load_prepared
from resam_jax.data.rasters import MIN_COMPONENT_AREA

HEIGHT, WIDTH = 40, 48  # not square, so a transposed mask cannot pass


def box(y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[y0:y1, x0:x1] = True
    return mask


# Per tile, the buildings drawn into its label, each the mask the build must store.
BUILDINGS = {
    "a": [
        box(2, 10, 3, 15),
        # Two blocks touching at one corner only: one 8-connected building.
        box(14, 20, 2, 8) | box(20, 26, 8, 16),
        # An L shape reaching the tile's edge.
        box(30, 40, 30, 34) | box(36, 40, 34, 48),
    ],
    "b": [box(0, 12, 20, 48)],
    "c": [],  # no building: skipped
}
SPECK = box(5, 8, 40, 43)  # 9 px, under MIN_COMPONENT_AREA: dropped and reported, in tile "a"


def write_tile(root: Path, split: str, name: str, buildings: list[np.ndarray], speck: bool):
    rng = np.random.default_rng(len(name) + len(split))
    pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    label = np.zeros((HEIGHT, WIDTH), np.uint8)
    for mask in buildings + ([SPECK] if speck else []):
        label[mask] = 255
    for folder in ("image", "label"):
        (root / split / folder).mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(pixels).save(root / split / "image" / f"{name}.tif", format="TIFF")
    PIL.Image.fromarray(label).save(root / split / "label" / f"{name}.tif", format="TIFF")


def whu_official(root: Path) -> Path:
    """WHU/{train,val,test}/{image,label}/{a,b,c}.tif."""
    base = root / "WHU"
    for split in ("train", "val", "test"):
        for name, buildings in BUILDINGS.items():
            write_tile(base, split, name, buildings, speck=name == "a")
    return base


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = prepare_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_components_become_instances_with_counts(tmp_path, capsys):
    manual = whu_official(tmp_path / "release")
    data_dir = tmp_path / "tfds"
    code, out, _ = run_cli(
        capsys, "--dataset", "whu_building", "--manual-dir", manual.parent, "--data-dir", data_dir
    )
    assert code == 0
    summary = json.loads(out)["splits"]
    assert MIN_COMPONENT_AREA > int(SPECK.sum())
    for split in ("train", "val", "test"):
        assert summary[split]["annotation_file"] == str(manual / split / "label")
        assert (summary[split]["images"], summary[split]["instances"]) == (2, 4)
        reasons = summary[split]["skipped"]["by_reason"]
        assert {kind: r["count"] for kind, r in reasons.items()} == {
            "component below the smallest area": 1,
            "image has no instances": 1,
        }
        (empty,) = reasons["image has no instances"]["examples"]
        assert empty["file"] == str(manual / split / "label" / "c.tif")

        source = load_prepared(data_dir, "whu_building", "default").as_data_source(split)
        assert [example["file_name"] for example in source] == [b"a.tif", b"b.tif"]
        for example in source:
            name = example["file_name"].decode().removesuffix(".tif")
            image = np.asarray(PIL.Image.open(manual / split / "image" / f"{name}.tif"))
            np.testing.assert_array_equal(example["image"], image)
            instances = example["instances"]
            masks = [
                mask_utils.decode({"size": [HEIGHT, WIDTH], "counts": rle}).astype(bool)
                for rle in instances["mask_rle"]
            ]
            expected = BUILDINGS[name]
            assert len(masks) == len(expected)
            for want in expected:  # each building exactly once, in any order
                assert sum(np.array_equal(mask, want) for mask in masks) == 1
            for mask, bbox, area in zip(masks, instances["bbox"], instances["area"], strict=True):
                ys, xs = np.nonzero(mask)
                np.testing.assert_array_equal(
                    bbox, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
                )
                assert area == mask.sum()
        ids = [i for example in source for i in example["instances"]["annotation_id"]]
        assert len(set(ids)) == len(ids)


def test_an_edited_label_is_a_changed_source(tmp_path, capsys):
    manual = whu_official(tmp_path / "release")
    argv = ["--dataset", "whu_building", "--manual-dir", manual, "--data-dir", tmp_path / "tfds"]
    assert run_cli(capsys, *argv)[0] == 0
    # The same file size, another building: only the labels' contents tell.
    write_tile(manual, "val", "b", [box(0, 12, 0, 30)], speck=False)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert f"val: {manual / 'val' / 'label'} changed" in err and err.rstrip().endswith("--rebuild")
    code, out, _ = run_cli(capsys, *argv, "--rebuild")
    assert code == 0 and json.loads(out)["built_now"] is True


def write_label(path: Path, values: np.ndarray) -> None:
    PIL.Image.fromarray(values).save(path, format="TIFF")


@pytest.mark.parametrize(
    "setup, file, expected",
    [
        (
            "grey_values",
            "val/label/a.tif",
            "label values 0, 128, 255; expected 0 (background) and 255",
        ),
        ("wrong_size", "test/label/b.tif", "the label is 40x40, its image"),
        ("rgb_label", "train/label/a.tif", "expected one band of 0 (background) and 255"),
        ("missing_label", "val/image/b.tif", "no label tile for this image; expected"),
        ("label_without_image", "train/label/z.tif", "a label without its image"),
        ("missing_label_folder", "val/label", "expected the label folder"),
        ("no_layout", "annotations/WHU_building_train.json", "or label rasters in"),
    ],
)
def test_an_unusable_label_is_one_error_naming_the_file(tmp_path, capsys, setup, file, expected):
    manual = whu_official(tmp_path / "release")
    label = (manual / file) if "label" in file else None
    if setup == "grey_values":
        values = np.zeros((HEIGHT, WIDTH), np.uint8)
        values[:4] = 255
        values[10:12] = 128
        write_label(label, values)
    elif setup == "wrong_size":
        write_label(label, np.zeros((HEIGHT, HEIGHT), np.uint8))
    elif setup == "rgb_label":
        write_label(label, np.zeros((HEIGHT, WIDTH, 3), np.uint8))
    elif setup == "missing_label":
        (manual / "val/label/b.tif").unlink()
    elif setup == "label_without_image":
        write_label(label, np.zeros((HEIGHT, WIDTH), np.uint8))
    elif setup == "missing_label_folder":
        for path in (manual / "val/label").iterdir():
            path.unlink()
        (manual / "val/label").rmdir()
    elif setup == "no_layout":
        for split in ("train", "val", "test"):
            (manual / split / "label").rename(manual / split / "labels")
    code, out, err = run_cli(
        capsys, "--dataset", "whu_building", "--manual-dir", manual, "--data-dir", tmp_path / "tfds"
    )
    assert code == 2 and out == "" and "Traceback" not in err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert str(manual / file) in line and expected in line, line
    assert not (tmp_path / "tfds" / "whu_building" / "default" / "1.0.0").exists()
