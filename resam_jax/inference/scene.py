"""Segment a scene of any size (GeoTIFF, or plain PNG / JPEG) from GeoJSON prompts, tile by tile.

    python -m resam_jax.predict_scene --checkpoint weights/sam_vit_b --image scene.tif \\
        --prompts prompts.geojson --output masks.tif --vectors instances.geojson \\
        [--tile-size 1024 --overlap 256 --batch-tiles 4 --multimask --bands 1,2,3]
    python -m resam_jax.predict_scene --checkpoint weights/sam_vit_b --image scene.tif \\
        --everything --output labels.tif --vectors instances.geojson [--points-per-side 32 ...]

The checkpoint is a converted SAM or SAM 2 one (its header says which; a run's
export/sam_merged of either family): each instance is what that family's predictor
(SamPredictor, Sam2ImagePredictor) gives on the tile its prompt is routed to. --everything takes
SAM only.

Prompts: a GeoJSON FeatureCollection. Each feature carries an `id` property (or a feature
`id`); the features that share an id form one prompt. Point / MultiPoint features are points,
positive unless their `label` property is 0; a Polygon / MultiPolygon gives its bounding box as
the prompt's box (at most one per prompt). On a georeferenced raster the coordinates are map
coordinates in the raster's CRS (a `crs` member naming another CRS is refused); otherwise they
are pixel coordinates (x = column, y = row; the centre of pixel (c, r) is at (c, r)), as
`resam_jax.predict` takes them.

Outputs: `--output` a GeoTIFF of instance labels (uint16, uint32 past 65535 prompts; 0 is
background; label k is the k-th prompt id in order of first appearance) with the scene's CRS
and transform; `--vectors` a GeoJSON FeatureCollection in the raster's CRS (pixel coordinates
for a plain image), one feature per prompt: its polygons (null when it kept no pixel) and the
properties `id`, `label`, `predicted_iou`, `pixels` and `tile` (the column and row of the tile
that segmented it). Tiling, routing and overlaps: resam_jax/inference/tiling.py.

The scene is read one tile window at a time and labels are written one window at a time (the
label image goes to a temporary file beside the output, compressed into place at the end), so
memory follows the tile batch, not the scene. Nothing is left at the output paths unless the
whole run succeeds. Needs rasterio: pip install -e ".[geo]".
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from resam_jax.files import staged
from resam_jax.inference import everything
from resam_jax.inference.common import PredictError, check_inside, load_either_model
from resam_jax.inference.tiling import Prompt, Tile, paste_instance, route, tile_grid

GEO_EXTRA = 'pip install -e ".[geo]"'
# GDAL's block cache; without a cap it grows with the scene (5% of RAM by default).
GDAL_CACHE_MB = 64


def import_rasterio():
    try:
        import rasterio
        import rasterio.features
        import rasterio.shutil
        import rasterio.windows
    except ImportError:
        raise PredictError(
            f"predict_scene reads and writes rasters with rasterio: {GEO_EXTRA}"
        ) from None
    return rasterio


def open_scene(stack: contextlib.ExitStack, image_path: Path):
    """The raster at `image_path`, open for as long as `stack` is: GDAL's block cache bounded
    (GDAL_CACHE_MB) and rasterio's NotGeoreferencedWarning silenced (a plain image is a scene
    in pixel coordinates); PredictError if rasterio cannot read it."""
    rasterio = import_rasterio()
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    try:
        return stack.enter_context(rasterio.open(image_path))
    except RasterioError as e:
        raise PredictError(f"cannot read raster {image_path}: {e}") from None


def is_georeferenced(dataset) -> bool:
    return not dataset.transform.is_identity


def apply_affine(transform, xy: np.ndarray) -> np.ndarray:
    """[N, 2] points through an affine.Affine (whose `*` / `@` on points changes between versions)."""
    a, b, c, d, e, f = tuple(transform)[:6]
    return np.stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f], axis=1)


def _label_of(value, where: str) -> int:
    if value in (0, 1) and not isinstance(value, float | str):
        return int(value)
    raise PredictError(
        f"{where}: property 'label' must be 1 (object) or 0 (background), got {value!r}"
    )


def read_prompts(path: Path, dataset, image_path: Path) -> list[Prompt]:
    """The prompts of a GeoJSON file, in the scene's pixel coordinates; every one inside it."""
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        collection = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PredictError(f"cannot read prompts {path}: {e}") from None
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        raise PredictError(f"{path}: expected a GeoJSON FeatureCollection")
    georeferenced = is_georeferenced(dataset)
    if (declared := collection.get("crs")) is not None:
        name = declared.get("properties", {}).get("name") if isinstance(declared, dict) else None
        try:
            crs = CRS.from_user_input(name)
        except (CRSError, TypeError):
            raise PredictError(f"{path}: field 'crs' names no known CRS: {declared!r}") from None
        if not georeferenced or dataset.crs is None or crs != dataset.crs:
            raster = dataset.crs.to_string() if dataset.crs else "no CRS (pixel coordinates)"
            raise PredictError(
                f"CRS mismatch: {path} declares {name}, {image_path} is in {raster}; "
                "reproject the prompts to the raster's CRS"
            )
    to_pixels = ~dataset.transform

    def pixels(coords, where: str) -> np.ndarray:
        try:
            xy = np.atleast_2d(np.asarray(coords, float))[:, :2]  # a z coordinate is ignored
        except (TypeError, ValueError):
            xy = np.zeros((0, 1))
        if xy.shape[1:] != (2,) or not len(xy):
            raise PredictError(f"{where}: coordinates must be [x, y] positions, got {coords!r}")
        given = xy
        if georeferenced:
            # The inverse transform puts pixel (c, r)'s centre at (c + 0.5, r + 0.5).
            xy = apply_affine(to_pixels, xy) - 0.5
        unit = f"map coordinates ({dataset.crs})" if georeferenced else "pixels"
        # Pixel (c, r)'s centre is at (c, r) here, at (c + 0.5, r + 0.5) in SAM's frame.
        check_inside(
            (
                (f"{where}: ({gx:g}, {gy:g}) in {unit}", (x + 0.5, y + 0.5))
                for (gx, gy), (x, y) in zip(given, xy)
            ),
            (dataset.height, dataset.width),
            f"the {dataset.width}x{dataset.height} scene {image_path}",
            margin=0.0,
        )
        return xy

    parts: dict[object, dict] = {}
    features = collection.get("features")
    if not isinstance(features, list):
        raise PredictError(f"{path}: field 'features' must be a list")
    for index, feature in enumerate(features):
        where = f"{path}: feature {index}"
        if not isinstance(feature, dict):
            raise PredictError(f"{where}: expected a GeoJSON Feature object")
        properties = feature.get("properties") or {}
        prompt_id = properties.get("id", feature.get("id"))
        if prompt_id is None or isinstance(prompt_id, dict | list):
            raise PredictError(
                f"{where}: needs an 'id' property (the features of a prompt share it)"
            )
        where = f"{where} (id {prompt_id!r})"
        geometry = feature.get("geometry") or {}
        kind, coords = geometry.get("type"), geometry.get("coordinates")
        part = parts.setdefault(prompt_id, {"points": [], "labels": [], "box": None})
        if kind in ("Point", "MultiPoint"):
            xy = pixels(coords, where)
            part["points"].append(xy)
            part["labels"] += [_label_of(properties.get("label", 1), where)] * len(xy)
        elif kind in ("Polygon", "MultiPolygon"):
            if part["box"] is not None:
                raise PredictError(f"{where}: a prompt takes one box; this id has two polygons")
            if properties.get("label", 1) != 1:
                raise PredictError(f"{where}: property 'label' of a Polygon (a box) must be 1")
            rings = coords if kind == "Polygon" else [r for poly in coords or [] for r in poly]
            xy = np.vstack([pixels(ring, where) for ring in rings or [None]])
            part["box"] = np.concatenate([xy.min(axis=0), xy.max(axis=0)])
        else:
            raise PredictError(
                f"{where}: geometry must be a Point, MultiPoint, Polygon or MultiPolygon, got {kind!r}"
            )
    prompts = []
    for prompt_id, part in parts.items():
        labels = np.asarray(part["labels"], np.int32)
        if part["box"] is None and not (labels == 1).any():
            raise PredictError(
                f"{path}: prompt id {prompt_id!r} needs a positive point or a polygon"
            )
        points = np.vstack(part["points"]) if part["points"] else np.zeros((0, 2))
        prompts.append(Prompt(prompt_id, points, labels, part["box"]))
    if not prompts:
        raise PredictError(f"{path}: no prompts (the FeatureCollection has no features)")
    return prompts


def read_tile(dataset, tile: Tile, bands: list[int], image_path: Path) -> np.ndarray:
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    try:
        pixels = dataset.read(bands, window=Window(tile.col, tile.row, tile.width, tile.height))
    except RasterioError as e:
        reason = e.__cause__ or e  # GDAL's own message, where rasterio wraps it
        raise PredictError(
            f"cannot read raster {image_path} (tile at column {tile.col}, row {tile.row}): {reason}"
        ) from None
    return np.ascontiguousarray(
        np.moveaxis(pixels, 0, -1)[..., [0, 0, 0] if len(bands) == 1 else slice(None)]
    )


def check_bands(dataset, bands: list[int] | None, image_path: Path) -> list[int]:
    if bands is None:
        bands = [1] if dataset.count < 3 else [1, 2, 3]
    if len(bands) not in (1, 3) or not all(1 <= b <= dataset.count for b in bands):
        raise PredictError(
            f"--bands {bands}: {image_path} has bands 1..{dataset.count}; give 1 or 3 of them"
        )
    dtypes = {dataset.dtypes[b - 1] for b in bands}
    if dtypes != {"uint8"}:
        raise PredictError(
            f"{image_path}: bands {bands} are {', '.join(sorted(dtypes))}, SAM takes 8-bit RGB; "
            "rescale first (e.g. gdal_translate -ot Byte -scale)"
        )
    return bands


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def crs_member(crs) -> dict | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else crs.to_wkt()
    return {"type": "name", "properties": {"name": name}}


def route_prompts(
    prompts: list[Prompt], tiles: list[Tile], scene, prompts_path: Path, tile_size: int
) -> dict[int, list[int]]:
    """Tile index -> the indices of the prompts routed to it (resam_jax.inference.tiling.route)."""
    routed: dict[int, list[int]] = {}
    for k, prompt in enumerate(prompts):
        t = route(prompt.extent(), tiles, scene.height, scene.width)
        if t is None:
            x0, y0, x1, y1 = prompt.extent()
            raise PredictError(
                f"{prompts_path}: prompt id {prompt.prompt_id!r} spans {x1 - x0 + 1:.0f}x"
                f"{y1 - y0 + 1:.0f} pixels, more than a tile; raise --tile-size (now {tile_size})"
            )
        routed.setdefault(t, []).append(k)
    return routed


def paste_mask(
    labels_out, scores: np.ndarray, label: int, mask: np.ndarray, iou: float, tile: Tile
):
    """Merge one instance's tile mask into the label raster through the window of its bounding
    box (read, paste_instance, write: instances are merged one after the other, so overlapping
    tiles and batches need no care). Returns that box (x0, y0, x1, y1) in the scene, None for
    an empty mask."""
    from rasterio.windows import Window

    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if not len(rows):
        return None
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    window = Window(tile.col + x0, tile.row + y0, x1 - x0, y1 - y0)
    labels = labels_out.read(1, window=window)
    paste_instance(labels, scores[labels], mask[y0:y1, x0:x1], label, iou)
    labels_out.write(labels, 1, window=window)
    return tile.col + x0, tile.row + y0, tile.col + x1, tile.row + y1


def instance_features(labels_out, prompts, scores, boxes, origins) -> list[dict]:
    """One GeoJSON feature per prompt: the polygons of the pixels its instance kept (read back
    within its bounding box), in the raster's coordinates."""
    from rasterio.features import shapes
    from rasterio.windows import Window

    features = []
    for label, prompt in enumerate(prompts, start=1):
        geometry, pixels = None, 0
        if label in boxes:
            x0, y0, x1, y1 = boxes[label]
            window = Window(x0, y0, x1 - x0, y1 - y0)
            instance = labels_out.read(1, window=window) == label
            pixels = int(instance.sum())
            transform = labels_out.window_transform(window)
            polygons = [
                p["coordinates"]
                for p, _ in shapes(instance.astype(np.uint8), mask=instance, transform=transform)
            ]
            if len(polygons) == 1:
                geometry = {"type": "Polygon", "coordinates": polygons[0]}
            elif polygons:
                geometry = {"type": "MultiPolygon", "coordinates": polygons}
        properties = {
            "id": prompt.prompt_id,
            "label": label,
            "predicted_iou": round(float(scores[label]), 6),
            "pixels": pixels,
            "tile": list(origins[label]),
        }
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return features


def label_outputs(
    stack: contextlib.ExitStack, scene, output: Path, vectors: Path, count: int
) -> tuple[object, Callable[[list[dict]], None]]:
    """The label raster of `count` instances, open for window reads and writes, and `finish`,
    which writes it (compressed) to `output` and the GeoJSON features to `vectors`. Both files
    are renamed into place when `stack` closes without an error, removed on any failure."""
    import rasterio
    import rasterio.shutil

    final = stack.enter_context(staged(output))
    vectors_tmp = stack.enter_context(staged(vectors))
    # The labels are merged in an uncompressed scratch file (windows are rewritten as
    # instances arrive), compressed into `final` at the end.
    work = (
        Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.")
            )
        )
        / "work.tif"
    )
    labels_out = stack.enter_context(
        rasterio.open(
            work, "w+", driver="GTiff", width=scene.width, height=scene.height, count=1,
            dtype="uint16" if count < 2**16 else "uint32", crs=scene.crs,
            transform=scene.transform, tiled=True, blockxsize=256, blockysize=256,
        )
    )  # fmt: skip

    def finish(features: list[dict]) -> None:
        collection = {"type": "FeatureCollection", "features": features}
        if (crs := crs_member(scene.crs)) is not None:
            collection["crs"] = crs
        labels_out.close()
        rasterio.shutil.copy(work, final, driver="GTiff", COMPRESS="DEFLATE", TILED="YES")
        vectors_tmp.write_text(json.dumps(collection) + "\n")

    return labels_out, finish


def segment_scene(
    load_model: Callable[[], tuple[object, str]],
    image_path: Path,
    prompts_path: Path,
    output: Path,
    vectors: Path,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_tiles: int = 1,
    multimask: bool = False,
    bands: list[int] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the whole command; returns a summary. `load_model` -> (Sam or Sam2, pixel_norm) is
    called once the inputs have been checked; each instance is what the model's predictor
    (SamPredictor, Sam2ImagePredictor) gives on the tile its prompt is routed to."""
    from resam_jax.inference.tiling import tile_segmenter

    import_rasterio()  # its absence is said before anything else
    for what, path in (("image", image_path), ("prompts", prompts_path)):
        if not path.is_file():
            raise PredictError(f"{what} file {path} does not exist")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        scene = open_scene(stack, image_path)
        bands = check_bands(scene, bands, image_path)
        prompts = read_prompts(prompts_path, scene, image_path)
        model, pixel_norm = load_model()
        tile_size = tile_size or model.config.image_size
        overlap = tile_size // 4 if overlap is None else overlap
        if not 0 <= overlap < tile_size:
            raise PredictError(
                f"--overlap {overlap} must be at least 0 and below the tile size {tile_size}"
            )
        tiles = tile_grid(scene.height, scene.width, tile_size, overlap)
        routed = route_prompts(prompts, tiles, scene, prompts_path, tile_size)

        labels_out, finish = label_outputs(stack, scene, output, vectors, len(prompts))
        tile_shape = (tiles[0].height, tiles[0].width)
        segmenter = tile_segmenter(model, tile_shape, batch_tiles, pixel_norm, multimask)
        scores = np.full(len(prompts) + 1, -np.inf)  # predicted IoU per label, background first
        boxes: dict[int, tuple] = {}  # label -> its pixels' bounding box in the scene
        origins: dict[int, tuple] = {}  # label -> (column, row) of the tile that segmented it
        done = 0
        for batch in batches(sorted(routed), segmenter.batch_tiles):
            images = [read_tile(scene, tiles[t], bands, image_path) for t in batch]
            local = [
                [prompts[k].shifted(tiles[t].col, tiles[t].row) for k in routed[t]] for t in batch
            ]
            for i, j, mask, iou in segmenter.segment(images, local):
                tile, label = tiles[batch[i]], routed[batch[i]][j] + 1
                if (box := paste_mask(labels_out, scores, label, mask, iou, tile)) is not None:
                    boxes[label] = box
                scores[label], origins[label] = iou, (tile.col, tile.row)
            done += len(batch)
            log(f"{done}/{len(routed)} tiles with prompts ({len(tiles)} in the grid)")
        features = instance_features(labels_out, prompts, scores, boxes, origins)
        finish(features)
        summary = {
            "scene": f"{scene.width}x{scene.height}",
            "prompts": len(prompts),
            "tiles": len(tiles),
            "tiles_encoded": len(routed),
            "devices": segmenter.mesh.devices.size,
            "seconds": round(time.perf_counter() - started, 2),
            "instances_with_pixels": sum(f["properties"]["pixels"] > 0 for f in features),
        }
    return summary


class _Instance:
    """A --everything instance as instance_features reads a prompt: its id (its label)."""

    def __init__(self, prompt_id: int):
        self.prompt_id = prompt_id


def segment_everything(
    load_model: Callable[[], tuple[object, str]],
    image_path: Path,
    output: Path,
    vectors: Path,
    options: dict,
    tile_size: int | None = None,
    overlap: int | None = None,
    bands: list[int] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """--everything: every mask of the scene with no prompts (resam_jax.inference.automatic,
    `options` its keyword arguments), written as the prompted command writes its instances, each
    feature with its `stability_score`, grid `point` and mask `box` (x0, y0, x1, y1: scene
    pixels, inclusive, before overlaps are resolved) besides; a summary.

    Each tile is segmented as one crop of the scene: a mask within 20 px of a tile border inside
    the scene is dropped there (the tile cut it) and found whole by a neighbour that holds it,
    given an overlap wider than the object plus 40 px. Masks found by two tiles (in their
    overlap) are merged by box NMS across tiles at the options' box_nms_thresh, the higher
    predicted IoU kept; where kept masks overlap, each pixel goes to the higher predicted IoU."""
    from resam_jax.inference.automatic import MaskSet, SamAutomaticMaskGenerator, box_nms
    from resam_jax.models.sam import Sam

    import_rasterio()  # its absence is said before anything else
    if not image_path.is_file():
        raise PredictError(f"image file {image_path} does not exist")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        scene = open_scene(stack, image_path)
        bands = check_bands(scene, bands, image_path)
        model, pixel_norm = load_model()
        if not isinstance(model, Sam):
            raise PredictError("--everything takes a SAM checkpoint, not SAM 2")
        tile_size = tile_size or model.config.image_size
        overlap = tile_size // 4 if overlap is None else overlap
        if not 0 <= overlap < tile_size:
            raise PredictError(
                f"--overlap {overlap} must be at least 0 and below the tile size {tile_size}"
            )
        tiles = tile_grid(scene.height, scene.width, tile_size, overlap)
        generator = SamAutomaticMaskGenerator(model, pixel_norm, **options)
        found = []
        for done, tile in enumerate(tiles, start=1):
            pixels = read_tile(scene, tile, bands, image_path)
            box = (tile.col, tile.row, tile.col + tile.width, tile.row + tile.height)
            found.append(generator.crop_masks(pixels, box, 0, (scene.height, scene.width)))
            log(f"{done}/{len(tiles)} tiles, {sum(map(len, found))} masks")
        masks = MaskSet.concat(found)
        masks = masks.take(box_nms(masks.boxes, masks.predicted_iou, generator.box_nms_thresh))
        if generator.min_mask_region_area > 0:
            masks = generator.remove_small_regions(masks)

        labels_out, finish = label_outputs(stack, scene, output, vectors, len(masks))
        scores = np.full(len(masks) + 1, -np.inf)  # predicted IoU per label, background first
        boxes, origins = {}, {}
        for i in range(len(masks)):
            label, mask = i + 1, masks.mask(i)
            col, row = (int(v) for v in masks.crop_boxes[i][:2])
            tile = Tile(col, row, mask.shape[1], mask.shape[0])
            iou = float(masks.predicted_iou[i])
            if (box := paste_mask(labels_out, scores, label, mask, iou, tile)) is not None:
                boxes[label] = box
            scores[label], origins[label] = iou, (col, row)
        instances = [_Instance(label) for label in range(1, len(masks) + 1)]
        features = instance_features(labels_out, instances, scores, boxes, origins)
        for i, feature in enumerate(features):
            feature["properties"]["stability_score"] = round(float(masks.stability_score[i]), 6)
            feature["properties"]["point"] = [round(float(v), 3) for v in masks.points[i]]
            feature["properties"]["box"] = [int(v) for v in masks.boxes[i]]
        finish(features)
        return {
            "scene": f"{scene.width}x{scene.height}",
            "tiles": len(tiles),
            "instances": len(masks),
            "instances_with_pixels": sum(f["properties"]["pixels"] > 0 for f in features),
            "seconds": round(time.perf_counter() - started, 2),
        }


def parse_bands(text: str) -> list[int]:
    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--bands must be like 1,2,3 or 1, got {text!r}") from None


def model_loader(checkpoint: Path, pixel_norm: str) -> Callable[[], tuple[object, str]]:
    """Loads the model (SAM or SAM 2, as the checkpoint's header says) when segment_scene has
    checked its inputs."""
    return lambda: load_either_model(checkpoint, pixel_norm)


def _segment_everything(args: argparse.Namespace) -> int:
    try:
        summary = segment_everything(
            model_loader(args.checkpoint, args.pixel_norm),
            args.image,
            args.output,
            args.vectors,
            everything.generator_options(args, crops=False),
            tile_size=args.tile_size,
            overlap=args.overlap,
            bands=args.bands,
            log=lambda line: print(line, file=sys.stderr),
        )
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    print(f"{summary['instances']} instance(s) -> {args.output}, {args.vectors}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resam_jax.predict_scene",
        description="Segment a large (Geo)TIFF / PNG / JPEG scene from GeoJSON prompts, in tiles.",
    )
    parser.add_argument(
        "--checkpoint", required=True, type=Path, help="converted checkpoint directory"
    )
    parser.add_argument("--image", required=True, type=Path, help="GeoTIFF, PNG or JPEG")
    parser.add_argument(
        "--prompts", type=Path, help="GeoJSON FeatureCollection (or --everything: no prompts)"
    )
    parser.add_argument("--output", required=True, type=Path, help="OUT.tif: instance labels")
    parser.add_argument(
        "--vectors", required=True, type=Path, help="OUT.geojson: instance polygons"
    )
    parser.add_argument(
        "--tile-size", type=int, help="tile side in pixels (default: the model's input size)"
    )
    parser.add_argument(
        "--overlap", type=int, help="pixels shared by neighbouring tiles (default: a quarter tile)"
    )
    parser.add_argument(
        "--batch-tiles",
        type=int,
        default=1,
        help="tiles encoded together (rounded up to the devices)",
    )
    parser.add_argument(
        "--multimask", action="store_true", help="keep the best of three candidate masks per prompt"
    )
    parser.add_argument(
        "--bands",
        type=parse_bands,
        help="band numbers read as RGB (default 1,2,3; 1 for a grey image)",
    )
    parser.add_argument(
        "--pixel-norm",
        choices=("auto", "sam", "unit"),
        default="auto",
        help="pixel input of the weights; auto: what the checkpoint records, else sam",
    )
    everything.add_arguments(parser, crops=False)
    args = parser.parse_args(argv)
    if (args.prompts is None) != args.everything:
        parser.error("give --prompts prompts.geojson or --everything (not both)")
    if args.tile_size is not None and args.tile_size < 16:
        parser.error("--tile-size must be at least 16")
    if args.batch_tiles < 1:
        parser.error("--batch-tiles must be at least 1")
    if args.output.resolve() == args.vectors.resolve():
        parser.error("--output and --vectors must be different files")
    if args.everything:
        return _segment_everything(args)
    try:
        summary = segment_scene(
            model_loader(args.checkpoint, args.pixel_norm),
            args.image,
            args.prompts,
            args.output,
            args.vectors,
            tile_size=args.tile_size,
            overlap=args.overlap,
            batch_tiles=args.batch_tiles,
            multimask=args.multimask,
            bands=args.bands,
            log=lambda line: print(line, file=sys.stderr),
        )
    except PredictError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    print(f"{summary['prompts']} instance(s) -> {args.output}, {args.vectors}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
