"""Scene segmentation in tiles (resam_jax.inference.tiling, resam_jax.inference.scene) with the packaged small
SAM (384 px input) on a real NWPU VHR-10 image tiled 2 x 2 into a georeferenced GeoTIFF."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
from PIL import Image  # noqa: E402
from rasterio.features import rasterize  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from resam_jax.inference.scene import apply_affine, main  # noqa: E402
from resam_jax.inference.tiling import Prompt, Tile, paste_instance, route, tile_grid, tile_origins  # noqa: E402

SMALL_SAM = Path(__file__).resolve().parents[1] / "resam_jax/assets/sam_small_nwpu"
TRANSFORM = from_origin(500000.0, 5000000.0, 0.5, 0.5)  # 0.5 m pixels, UTM 33N
CRS = "EPSG:32633"
CRS_MEMBER = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
# 8 baseball diamonds, 918 x 556; 2 x 2 copies make a 1836 x 1112 scene. The small SAM was
# trained on whole NWPU images resized to 384, so 768 px tiles show objects near that scale.
NWPU_IMAGE, NWPU_IMAGE_ID = "603.jpg", 602
TILE, OVERLAP = 768, 256


def write_raster(path, pixels, transform=TRANSFORM, crs=CRS, driver="GTiff"):
    profile = dict(driver=driver, width=pixels.shape[1], height=pixels.shape[0], count=3)
    if driver == "GTiff":
        profile.update(crs=crs, transform=transform, tiled=True)
    with rasterio.open(path, "w", dtype="uint8", **profile) as dst:
        dst.write(np.moveaxis(pixels, -1, 0))


def map_xy(x, y):
    """Pixel-index coordinates -> map coordinates (the pixel's centre, as rasterio.transform.xy)."""
    return apply_affine(TRANSFORM, np.array([[x + 0.5, y + 0.5]]))[0].tolist()


def feature(prompt_id, kind, xy, georeferenced, **properties):
    to = map_xy if georeferenced else (lambda x, y: [x, y])
    if kind == "Polygon":
        x0, y0, x1, y1 = xy
        coords = [[to(x, y) for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]]]
    elif kind == "MultiPoint":
        coords = [to(*p) for p in xy]
    else:
        coords = to(*xy)
    geometry = {"type": kind, "coordinates": coords}
    return {"type": "Feature", "geometry": geometry, "properties": {"id": prompt_id, **properties}}


def write_prompts(path, specs, georeferenced, crs=CRS_MEMBER):
    collection = {
        "type": "FeatureCollection",
        "features": [feature(*spec[:3], georeferenced, **spec[3]) for spec in specs],
    }
    if crs is not None:
        collection["crs"] = crs
    path.write_text(json.dumps(collection))


@pytest.fixture(scope="module")
def nwpu_scene(nwpu_dir, tmp_path_factory):
    """The 2 x 2 mosaic as GeoTIFF and PNG, and prompts: every object's box, a centre point on
    two boxed objects (overlapping instances), a positive + negative point pair."""
    root = tmp_path_factory.mktemp("scene")
    image = np.asarray(Image.open(nwpu_dir / "Images" / NWPU_IMAGE).convert("RGB"))
    annotations = json.loads((nwpu_dir / "Annotations/NWPU_instances_val.json").read_text())
    boxes = [a["bbox"] for a in annotations["annotations"] if a["image_id"] == NWPU_IMAGE_ID]
    h, w = image.shape[:2]
    scene = np.tile(image, (2, 2, 1))
    write_raster(root / "scene.tif", scene)
    Image.fromarray(scene).save(root / "scene.png")
    specs = []
    for cx, cy in [(0, 0), (1, 1)]:  # two of the copies: prompts in every tile
        for i, (x, y, bw, bh) in enumerate(boxes):
            box = (x + cx * w, y + cy * h, x + bw + cx * w - 1, y + bh + cy * h - 1)
            specs.append((f"box{cx}{cy}_{i}", "Polygon", box, {}))
    for spec in specs[:2]:
        x0, y0, x1, y1 = spec[2]
        specs.append((f"point_{spec[0]}", "Point", ((x0 + x1) / 2, (y0 + y1) / 2), {}))
    x0, y0, x1, y1 = specs[5][2]
    specs += [
        ("pair", "Point", ((x0 + x1) / 2, (y0 + y1) / 2), {"label": 1}),
        ("pair", "Point", (x1 + 20, y1 + 20), {"label": 0}),
    ]
    write_prompts(root / "prompts.geojson", specs, georeferenced=True)
    write_prompts(root / "prompts_px.geojson", specs, georeferenced=False, crs=None)
    return root, scene, specs


def run_scene(root, image, prompts, name):
    args = ["--checkpoint", str(SMALL_SAM), "--image", str(root / image)]
    args += ["--prompts", str(root / prompts), "--output", str(root / f"{name}.tif")]
    args += ["--vectors", str(root / f"{name}.geojson"), "--tile-size", str(TILE)]
    args += ["--overlap", str(OVERLAP), "--batch-tiles", "2"]
    assert main(args) == 0
    with rasterio.open(root / f"{name}.tif") as labels:
        return labels.read(1), labels.profile, json.loads((root / f"{name}.geojson").read_text())


@pytest.fixture(scope="module")
def geotiff_run(nwpu_scene):
    return run_scene(nwpu_scene[0], "scene.tif", "prompts.geojson", "geo")


@pytest.fixture(scope="module")
def predictor():
    from resam_jax.inference.predictor import SamPredictor
    from resam_jax.models.sam import load_sam

    return SamPredictor(load_sam(SMALL_SAM), pixel_norm="unit")  # the small SAM's pixel scale


def test_georeferencing_and_vectors(nwpu_scene, geotiff_run):
    root, scene, specs = nwpu_scene
    labels, profile, vectors = geotiff_run
    assert labels.shape == scene.shape[:2] and profile["dtype"] == "uint16"
    assert profile["crs"] == rasterio.crs.CRS.from_string(CRS)
    assert profile["transform"] == TRANSFORM
    assert vectors["crs"] == CRS_MEMBER
    features = vectors["features"]
    assert [f["properties"]["id"] for f in features] == list(dict.fromkeys(s[0] for s in specs))
    assert sum(f["properties"]["pixels"] > 0 for f in features) >= len(features) - 2
    for f in features:
        k = f["properties"]["label"]
        assert f["properties"]["pixels"] == (labels == k).sum()
        if f["geometry"] is not None:  # the polygons, rasterised back, are the instance's pixels
            burnt = rasterize([f["geometry"]], out_shape=labels.shape, transform=TRANSFORM)
            assert np.array_equal(burnt == 1, labels == k)


def test_masks_equal_predictor_on_routed_tile(nwpu_scene, geotiff_run, predictor):
    """Every instance is the predictor's mask on the tile its prompt was routed to, pasted at the
    tile's offset, minus the pixels of overlapping instances with a higher predicted IoU."""
    root, scene, specs = nwpu_scene
    labels, _, vectors = geotiff_run
    scores = {
        f["properties"]["label"]: f["properties"]["predicted_iou"] for f in vectors["features"]
    }
    scores[0] = -np.inf
    ids = list(dict.fromkeys(s[0] for s in specs))
    lost_to_overlaps = 0
    tile = None
    for f in sorted(vectors["features"], key=lambda f: f["properties"]["tile"]):
        k, (col, row) = f["properties"]["label"], f["properties"]["tile"]
        parts = [s for s in specs if s[0] == ids[k - 1]]
        points = np.array([s[2] for s in parts if s[1] == "Point"], float).reshape(-1, 2)
        point_labels = np.array([s[3].get("label", 1) for s in parts if s[1] == "Point"])
        box = next((np.array(s[2], float) for s in parts if s[1] == "Polygon"), None)
        if tile != (col, row):
            predictor.set_image(scene[row : row + TILE, col : col + TILE])
            tile = (col, row)
        mask, iou, _ = predictor.predict(
            points - (col, row) if len(points) else None,
            point_labels if len(points) else None,
            None if box is None else box - (col, row, col, row),
            multimask_output=False,
        )
        assert abs(iou[0] - f["properties"]["predicted_iou"]) < 1e-4
        window = labels[row : row + TILE, col : col + TILE]
        assert (labels == k).sum() == (window == k).sum()  # nothing outside its tile
        owner_scores = np.vectorize(scores.get)(window)
        taken = mask[0] & (window != k)
        assert (owner_scores[taken] >= iou[0] - 1e-6).all()  # only by better-scored instances
        lost_to_overlaps += taken.sum()
        assert ((window == k) != (mask[0] & ~taken)).mean() <= 1e-3
    assert lost_to_overlaps > 0  # the point prompts on boxed objects did overlap


def test_png_in_pixel_coordinates_matches_geotiff(nwpu_scene, geotiff_run):
    root = nwpu_scene[0]
    labels, profile, vectors = run_scene(root, "scene.png", "prompts_px.geojson", "png")
    assert profile["crs"] is None and profile["transform"].is_identity
    assert "crs" not in vectors
    assert np.array_equal(labels, geotiff_run[0])  # map coordinates -> the same pixels
    for png_feature, geo_feature in zip(vectors["features"], geotiff_run[2]["features"]):
        assert png_feature["properties"] == geo_feature["properties"]


def test_straddling_object_goes_to_the_tile_centred_on_it(nwpu_dir, tmp_path, predictor):
    """With tiles overlapping by half a tile, the border between two tiles is the centre line of a
    third. An object centred on such a border goes to that third tile, and its mask is the
    predictor's on the window centred on the object."""
    image = np.asarray(Image.open(nwpu_dir / "Images" / NWPU_IMAGE).convert("RGB"))
    # A crop of 3 x 3 copies that puts object 2 of copy (1, 1) (124 x 107 px) across x = 768,
    # the right border of tile column 0 and the left border of tile column 768.
    scene = np.ascontiguousarray(np.tile(image, (3, 3, 1))[540 : 540 + 1152, 450 : 450 + 1536])
    box = (1156 - 450, 870 - 540, 1279 - 450, 976 - 540)
    assert box[0] < TILE <= box[2] and (box[0] + box[2]) / 2 == TILE - 0.5
    write_raster(tmp_path / "scene.tif", scene)
    write_prompts(tmp_path / "prompts.geojson", [("straddling", "Polygon", box, {})], True)
    args = ["--checkpoint", str(SMALL_SAM), "--image", str(tmp_path / "scene.tif")]
    args += ["--prompts", str(tmp_path / "prompts.geojson"), "--output", str(tmp_path / "m.tif")]
    args += ["--vectors", str(tmp_path / "v.geojson"), "--tile-size", str(TILE)]
    assert main(args + ["--overlap", str(TILE // 2), "--batch-tiles", "2"]) == 0
    with rasterio.open(tmp_path / "m.tif") as out:
        labels = out.read(1)
    assert json.loads((tmp_path / "v.geojson").read_text())["features"][0]["properties"][
        "tile"
    ] == [384, 0]
    x0 = int((box[0] + box[2]) / 2 + 0.5) - TILE // 2  # the window centred on the object
    predictor.set_image(scene[:TILE, x0 : x0 + TILE])
    centred, _, _ = predictor.predict(
        box=np.array(box, float) - (x0, 0, x0, 0), multimask_output=False
    )
    expected = np.zeros(labels.shape, bool)
    expected[:TILE, x0 : x0 + TILE] = centred[0]
    assert expected[:, :TILE].any() and expected[:, TILE:].any()  # a cut at x = 768 would clip it
    assert ((labels == 1) != expected).mean() <= 1e-4


def test_multimask_keeps_the_best_candidate(nwpu_scene, predictor, tmp_path):
    root, scene, specs = nwpu_scene
    x0, y0, x1, y1 = specs[2][2]
    point = ((x0 + x1) / 2, (y0 + y1) / 2)
    write_prompts(tmp_path / "point.geojson", [("p", "Point", point, {})], True)
    args = ["--checkpoint", str(SMALL_SAM), "--image", str(root / "scene.tif")]
    args += ["--prompts", str(tmp_path / "point.geojson"), "--output", str(tmp_path / "m.tif")]
    args += ["--vectors", str(tmp_path / "v.geojson"), "--tile-size", str(TILE)]
    assert main(args + ["--overlap", str(OVERLAP), "--batch-tiles", "2", "--multimask"]) == 0
    with rasterio.open(tmp_path / "m.tif") as out:
        labels = out.read(1)
    properties = json.loads((tmp_path / "v.geojson").read_text())["features"][0]["properties"]
    col, row = properties["tile"]
    predictor.set_image(scene[row : row + TILE, col : col + TILE])
    masks, iou, _ = predictor.predict(np.array([point]) - (col, row), np.array([1]))
    assert abs(properties["predicted_iou"] - iou.max()) < 1e-4
    window = labels[row : row + TILE, col : col + TILE] == 1
    assert (window != masks[np.argmax(iou)]).mean() <= 1e-3 and window.sum() == (labels == 1).sum()


def test_tile_grid_and_routing():
    assert tile_origins(1000, 400, 100) == [0, 300, 600]
    assert tile_origins(300, 400, 100) == [0]
    tiles = tile_grid(1000, 1000, 400, 100)
    assert len(tiles) == 9 and tiles[1] == Tile(300, 0, 400, 400)
    # x = 390 is 10 px from tile 0's right border, 90 px inside tile 1.
    assert tiles[route(np.array([390, 200, 390, 200]), tiles, 1000, 1000)] == Tile(300, 0, 400, 400)
    # The scene's edge is no border: a point 5 px from it still routes by its other margins.
    assert tiles[route(np.array([5, 350, 5, 350]), tiles, 1000, 1000)] == Tile(0, 300, 400, 400)
    # A box that no tile holds (wider than a tile, or across the middle of every tile column).
    assert route(np.array([100, 100, 550, 150]), tiles, 1000, 1000) is None
    prompt = Prompt("p", np.array([[10.0, 20.0]]), np.array([1]), np.array([5.0, 6.0, 30.0, 40.0]))
    assert np.array_equal(prompt.extent(), [5, 6, 30, 40])
    assert np.array_equal(prompt.shifted(5, 6).box, [0, 0, 25, 34])


def test_overlapping_instances_higher_iou_wins():
    a, b = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    a[:, :3], b[:, 1:] = True, True
    results = []
    for order in ([(1, a, 0.7), (2, b, 0.9)], [(2, b, 0.9), (1, a, 0.7)]):
        labels, scores = np.zeros((4, 4), np.uint16), np.full((4, 4), -np.inf)
        for label, mask, score in order:
            paste_instance(labels, scores, mask, label, score)
        results.append(labels)
    assert np.array_equal(results[0], results[1])
    assert (results[0][:, 0] == 1).all() and (results[0][:, 1:] == 2).all()
    labels, scores = np.zeros((4, 4), np.uint16), np.full((4, 4), -np.inf)
    paste_instance(labels, scores, b, 2, 0.5)
    paste_instance(labels, scores, a, 1, 0.5)  # a tie goes to the lower label
    assert (labels[:, :3] == 1).all() and (labels[:, 3] == 2).all()


@pytest.fixture()
def small_scene(tmp_path):
    """A random 500 x 300 georeferenced GeoTIFF and a valid prompts file for the error cases."""
    pixels = np.random.default_rng(0).integers(0, 256, (300, 500, 3), dtype=np.uint8)
    write_raster(tmp_path / "scene.tif", pixels)
    write_prompts(tmp_path / "prompts.geojson", [("a", "Point", (100, 100), {})], True)
    return tmp_path


def run_failing(root, capsys, image="scene.tif", prompts="prompts.geojson", extra=()):
    out = root / "out"
    args = ["--checkpoint", str(SMALL_SAM), "--image", str(root / image)]
    args += ["--prompts", str(root / prompts), "--output", str(out / "masks.tif")]
    args += ["--vectors", str(out / "instances.geojson"), *extra]
    assert main(args) == 2
    assert not out.exists() or not list(out.iterdir())  # nothing half-written, no temporaries
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    return errors[0]


@pytest.mark.parametrize(
    "specs, crs, georeferenced, expected",
    [
        ([("far", "Point", (520, 100), {})], CRS_MEMBER, True, "feature 0 (id 'far')"),
        ([("neg", "Point", (10, 10), {"label": 0})], CRS_MEMBER, True, "needs a positive point"),
        ([("a", "Point", (10, 10), {})], {"type": "name", "properties": {"name": "EPSG:4326"}}, True, "CRS mismatch"),
        ([("big", "Polygon", (10, 10, 450, 200), {})], CRS_MEMBER, True, "raise --tile-size"),
        ([("p", "Point", (10, 10), {"label": 2})], CRS_MEMBER, True, "property 'label'"),
    ],
    ids=["outside", "negative-only", "crs-mismatch", "larger-than-tile", "bad-label"],
)  # fmt: skip
def test_bad_prompts(small_scene, capsys, specs, crs, georeferenced, expected):
    write_prompts(small_scene / "bad.geojson", specs, georeferenced, crs)
    err = run_failing(small_scene, capsys, prompts="bad.geojson")
    assert expected in err and "bad.geojson" in err
    if expected.startswith("feature 0"):
        assert "outside the 500x300 scene" in err


def test_crs_on_plain_image_is_a_mismatch(small_scene, capsys):
    Image.fromarray(np.zeros((50, 60, 3), np.uint8)).save(small_scene / "plain.png")
    err = run_failing(small_scene, capsys, image="plain.png")
    assert "CRS mismatch" in err and "no CRS (pixel coordinates)" in err


def test_unreadable_and_missing_files(small_scene, capsys):
    (small_scene / "garbage.tif").write_bytes(b"not a raster at all")
    assert "cannot read raster" in run_failing(small_scene, capsys, image="garbage.tif")
    assert "does not exist" in run_failing(small_scene, capsys, image="missing.tif")
    assert "does not exist" in run_failing(small_scene, capsys, prompts="missing.geojson")
    err = run_failing(small_scene, capsys, extra=["--checkpoint", str(small_scene)])
    assert "not a converted SAM checkpoint" in err


def test_truncated_raster_leaves_nothing(small_scene, capsys):
    """A raster whose header reads but whose pixels do not fails mid-run, after the temporary
    outputs exist: they are removed."""
    pixels = np.random.default_rng(1).integers(0, 256, (600, 900, 3), dtype=np.uint8)
    write_raster(small_scene / "big.tif", pixels)
    data = (small_scene / "big.tif").read_bytes()
    (small_scene / "truncated.tif").write_bytes(data[: len(data) // 2])
    write_prompts(small_scene / "late.geojson", [("a", "Point", (800, 500), {})], True)
    err = run_failing(small_scene, capsys, image="truncated.tif", prompts="late.geojson")
    assert "cannot read raster" in err and "truncated.tif" in err


def test_missing_rasterio_names_the_extra(small_scene, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "rasterio", None)
    assert '".[geo]"' in run_failing(small_scene, capsys)


def test_command_exit_code(small_scene):
    result = subprocess.run(
        [sys.executable, "-m", "resam_jax.predict_scene", "--checkpoint", str(SMALL_SAM)]
        + ["--image", str(small_scene / "nope.tif"), "--prompts", str(small_scene / "p.json")]
        + ["--output", str(small_scene / "m.tif"), "--vectors", str(small_scene / "v.json")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: image file {small_scene / 'nope.tif'} does not exist"


@pytest.mark.slow  # a second process to have two devices: ~40 s on two busy cores
def test_tiles_sharded_over_two_devices_give_the_same_labels(small_scene):
    """--batch-tiles 3 on two (forced) CPU devices: a batch padded to 4 tiles, split 2 + 2."""
    pixels = np.full((300, 500, 3), 60, np.uint8)
    specs = []
    for i in range(5):
        x, y = 60 + 90 * i, 80 + 60 * (i % 3)
        pixels[y - 20 : y + 20, x - 25 : x + 25] = (230, 220, 200)  # bright roofs on dark ground
        specs.append((f"p{i}", "Polygon", (x - 27, y - 22, x + 27, y + 22), {}))
    write_raster(small_scene / "roofs.tif", pixels)
    write_prompts(small_scene / "many.geojson", specs, True)
    args = ["--checkpoint", str(SMALL_SAM), "--image", str(small_scene / "roofs.tif")]
    args += ["--prompts", str(small_scene / "many.geojson"), "--tile-size", "200"]
    args += ["--overlap", "40", "--batch-tiles", "3"]
    outputs = {}
    for devices in (1, 2):
        out = [
            "--output", str(small_scene / f"m{devices}.tif"),
            "--vectors", str(small_scene / f"v{devices}.geojson"),
        ]  # fmt: skip
        if devices == 1:
            assert main(args + out) == 0
        else:
            env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
            env["JAX_PLATFORMS"] = "cpu"
            result = subprocess.run(
                [sys.executable, "-m", "resam_jax.predict_scene", *args, *out],
                check=True, capture_output=True, env=env, cwd=Path(__file__).resolve().parents[1],
            )  # fmt: skip
            assert json.loads(result.stdout.splitlines()[0])["devices"] == 2
        with rasterio.open(small_scene / f"m{devices}.tif") as labels:
            outputs[devices] = labels.read(1)
    assert len(np.unique(outputs[1])) > 3
    assert np.array_equal(outputs[1], outputs[2])


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_jpeg_read_in_windows(nwpu_dir):
    """A plain JPEG reads tile by tile through rasterio (GDAL's libjpeg, whose decode differs
    from Pillow's by a few grey levels on some pixels)."""
    from resam_jax.inference.scene import read_tile

    path = nwpu_dir / "Images" / NWPU_IMAGE
    decoded = np.asarray(Image.open(path).convert("RGB")).astype(int)
    with rasterio.open(path) as jpeg:
        assert jpeg.transform.is_identity and jpeg.crs is None
        tile = read_tile(jpeg, Tile(100, 50, 384, 300), [1, 2, 3], path)
    assert tile.shape == (300, 384, 3) and tile.dtype == np.uint8
    assert np.abs(tile - decoded[50:350, 100:484]).mean() < 1
