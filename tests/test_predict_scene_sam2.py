"""resam_jax.predict_scene on a SAM 2 checkpoint (a tiny converted hiera_test at 64 px, random
weights): every instance is Sam2ImagePredictor's mask on the tile its prompt was routed to,
pasted at the tile's offset (minus the pixels of better-scored overlapping instances), with
tiles larger than the model's input and not square (the stretch of SAM2Transforms)."""

import json
import shutil

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from PIL import Image  # noqa: E402
from sam2_tiny import save_tiny_sam2  # noqa: E402

from resam_jax.inference.predictor_sam2 import Sam2ImagePredictor  # noqa: E402
from resam_jax.inference.scene import main  # noqa: E402
from resam_jax.models.sam2.checkpoint import load_sam2  # noqa: E402

# A 150 x 70 scene in 80 px tiles overlapping by 30: three 80 x 70 tiles (columns 0, 50, 70),
# each stretched to the model's 64 x 64.
TILE, OVERLAP = 80, 30
SPECS = [  # (id, kind, coordinates, properties), pixel coordinates
    ("box_left", "Polygon", (8, 10, 40, 45), {}),
    ("point_left", "Point", (24, 28), {}),  # on the boxed object: overlapping instances
    ("box_right", "Polygon", (112, 20, 140, 60), {}),
    ("pair", "Point", (126, 40), {"label": 1}),
    ("pair", "Point", (100, 12), {"label": 0}),
    ("middle", "Point", (75, 35), {}),
    ("middle_box", "Point", (70, 30), {}),
    ("middle_box", "Polygon", (60, 20, 85, 50), {}),
]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene_sam2")
    checkpoint = save_tiny_sam2(root / "sam2_tiny", image_size=64, seed=3)
    rng = np.random.default_rng(4)
    pixels = rng.integers(0, 70, (70, 150, 3)).astype(np.uint8)
    for x0, y0, x1, y1, colour in [(8, 10, 40, 45, 210), (112, 20, 140, 60, 160), (60, 22, 84, 48, 120)]:  # fmt: skip
        pixels[y0:y1, x0:x1] = colour + rng.integers(0, 30, (y1 - y0, x1 - x0, 3))
    Image.fromarray(pixels).save(root / "scene.png")
    features = []
    for prompt_id, kind, xy, properties in SPECS:
        if kind == "Polygon":
            x0, y0, x1, y1 = xy
            coords = [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]
        else:
            coords = list(xy)
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": kind, "coordinates": coords},
                "properties": {"id": prompt_id, **properties},
            }
        )
    (root / "prompts.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": features})
    )
    return root, checkpoint, pixels


def run_scene(root, checkpoint, name, *extra):
    args = ["--checkpoint", str(checkpoint), "--image", str(root / "scene.png")]
    args += ["--prompts", str(root / "prompts.geojson"), "--output", str(root / f"{name}.tif")]
    args += ["--vectors", str(root / f"{name}.geojson"), "--tile-size", str(TILE)]
    assert main([*args, "--overlap", str(OVERLAP), "--batch-tiles", "2", *extra]) == 0
    with rasterio.open(root / f"{name}.tif") as labels:
        return labels.read(1), json.loads((root / f"{name}.geojson").read_text())["features"]


def prompt_of(prompt_id):
    parts = [s for s in SPECS if s[0] == prompt_id]
    points = np.array([s[2] for s in parts if s[1] == "Point"], float).reshape(-1, 2)
    labels = np.array([s[3].get("label", 1) for s in parts if s[1] == "Point"])
    box = next((np.array(s[2], float) for s in parts if s[1] == "Polygon"), None)
    return points, labels, box


@pytest.mark.parametrize("multimask", [False, True], ids=["single", "multimask"])
def test_instances_are_the_sam2_predictor_on_the_routed_tile(scene, multimask):
    root, checkpoint, pixels = scene
    labels, features = run_scene(
        root, checkpoint, f"m{int(multimask)}", *(["--multimask"] if multimask else [])
    )
    predictor = Sam2ImagePredictor(load_sam2(checkpoint))  # its defaults: dynamic fallback on
    scores = {f["properties"]["label"]: f["properties"]["predicted_iou"] for f in features}
    scores[0] = -np.inf
    ids = list(dict.fromkeys(s[0] for s in SPECS))
    assert [f["properties"]["id"] for f in features] == ids
    tiles, lost_to_overlaps = set(), 0
    for f in features:
        k, (col, row) = f["properties"]["label"], f["properties"]["tile"]
        tiles.add((col, row))
        window = labels[row : row + 70, col : col + TILE]
        assert window.shape == (70, TILE)
        points, point_labels, box = prompt_of(ids[k - 1])
        predictor.set_image(pixels[row : row + 70, col : col + TILE])
        masks, iou, _ = predictor.predict(
            points - (col, row) if len(points) else None,
            point_labels if len(points) else None,
            None if box is None else box - (col, row, col, row),
            multimask_output=multimask,
        )
        best = int(np.argmax(iou))
        mask, best_iou = masks[best].astype(bool), float(iou[best])
        assert 0 < mask.mean() < 1, ids[k - 1]  # a real mask: the comparison means something
        assert abs(best_iou - f["properties"]["predicted_iou"]) < 1e-5, ids[k - 1]
        assert (labels == k).sum() == (window == k).sum()  # nothing outside its tile
        owner_scores = np.vectorize(scores.get)(window)
        taken = mask & (window != k)
        assert (owner_scores[taken] >= best_iou - 1e-6).all()  # only by better-scored instances
        lost_to_overlaps += taken.sum()
        assert ((window == k) != (mask & ~taken)).mean() <= 1e-3, ids[k - 1]
    assert len(tiles) == 3 and lost_to_overlaps > 0


def test_everything_refuses_sam2(scene, capsys):
    root, checkpoint, _ = scene
    args = ["--checkpoint", str(checkpoint), "--image", str(root / "scene.png"), "--everything"]
    assert main([*args, "--output", str(root / "e.tif"), "--vectors", str(root / "e.geojson")]) == 2
    assert "--everything takes a SAM checkpoint" in capsys.readouterr().err
    assert not (root / "e.tif").exists()


def test_a_sam2_adapted_on_unit_pixels_is_refused(scene, tmp_path, capsys):
    """A run with model.pixel_norm="unit" records it in its export; SAM 2's predictor always
    normalises, so its masks would be wrong: the command says so instead."""
    root, checkpoint, _ = scene
    shutil.copytree(checkpoint, tmp_path / "unit")
    header = json.loads((tmp_path / "unit" / "sam_checkpoint.json").read_text())
    header["source"]["pixel_norm"] = "unit"
    (tmp_path / "unit" / "sam_checkpoint.json").write_text(json.dumps(header))
    args = ["--checkpoint", str(tmp_path / "unit"), "--image", str(root / "scene.png")]
    args += ["--prompts", str(root / "prompts.geojson"), "--output", str(tmp_path / "m.tif")]
    assert main([*args, "--vectors", str(tmp_path / "v.geojson")]) == 2
    assert "adapted on model.pixel_norm='unit' pixels" in capsys.readouterr().err
