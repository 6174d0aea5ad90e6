"""Instance data released as label rasters (WHU building's official tiles): image tiles and
same-named 0/255 label tiles, whose connected components become the instances.

Components are 8-connected: pixels touching at a corner belong to one building, as contour
tracing (OpenCV's, the usual way such labels become polygons) follows them. Components under
`MIN_COMPONENT_AREA` pixels (4 x 4) are dropped and reported: at WHU's 0.3 m that is under
1.5 m^2, no building, only label noise or a sliver cut by the tile edge, whose point prompt
and box would carry no shape. A tile left without a component is skipped and reported, as in the COCO
layout. A label that cannot be used (missing, not one 0/255 band, not its image's size) stops
the build with one error naming the file.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path

import numpy as np
import PIL.Image
from pycocotools import mask as mask_utils
from scipy import ndimage

from resam_jax.data.coco import (
    RGB_CONVERTIBLE_MODES,
    DataError,
    ImageRecord,
    Instance,
    Skip,
    SplitContents,
)

MIN_COMPONENT_AREA = 16
EIGHT_CONNECTED = np.ones((3, 3), bool)
RASTER_SUFFIXES = (".tif", ".tiff", ".png")
BUILDING_CATEGORY_ID = 1


def raster_files(folder: Path) -> list[Path]:
    """The tiles of a folder (RASTER_SUFFIXES, any case), sorted by name."""
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
    )


def read_label_rasters(
    image_dir: Path, label_dir: Path, num_threads: int | None = None
) -> SplitContents:
    """Every image tile of `image_dir` with the instances of its label in `label_dir`.

    Image ids are the tiles' positions in name order (1-based); annotation ids count the
    split's instances in that order. Raises DataError for the first unusable label or image.
    """
    images = raster_files(image_dir)
    labels = {p.stem: p for p in raster_files(label_dir)}
    orphans = sorted(labels.keys() - {p.stem for p in images})
    if orphans:
        raise DataError(
            f"{label_dir / labels[orphans[0]].name}: a label without its image in {image_dir} "
            f"({len(orphans)} such labels)"
        )
    missing = [p for p in images if p.stem not in labels]
    if missing:
        raise DataError(
            f"{missing[0]}: no label tile for this image; expected {label_dir / missing[0].name} "
            f"({len(missing)} images without a label)"
        )

    with concurrent.futures.ThreadPoolExecutor(num_threads or os.cpu_count()) as pool:
        tiles = list(pool.map(lambda image: _read_tile(image, labels[image.stem]), images))
    records, skips, next_id = [], [], 1
    for image_id, (image, (height, width, components, tile_skips)) in enumerate(
        zip(images, tiles, strict=True), start=1
    ):
        skips.extend(tile_skips)
        if not components:
            continue
        instances = []
        for rle, bbox, area in components:
            instances.append(Instance(rle, bbox, area, next_id, BUILDING_CATEGORY_ID))
            next_id += 1
        records.append(ImageRecord(image_id, image, image.name, height, width, tuple(instances)))
    return SplitContents(label_dir, tuple(records), tuple(skips))


def _read_tile(
    image: Path, label: Path
) -> tuple[int, int, list[tuple[bytes, tuple, int]], list[Skip]]:
    """(height, width, [(RLE counts, xyxy box, area)] of the kept components, skips) of one
    tile; the masks are encoded here, so a split never holds its masks decoded."""
    try:
        with PIL.Image.open(image) as opened:
            opened.load()
            width, height, mode = *opened.size, opened.mode
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise DataError(f"{image}: the image does not decode: {e}") from None
    if mode not in RGB_CONVERTIBLE_MODES:
        raise DataError(f"{image}: PIL mode {mode}; expected an 8-bit RGB or grey image")
    try:
        with PIL.Image.open(label) as opened:
            values = np.asarray(opened)
    except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError) as e:
        raise DataError(f"{label}: the label does not decode: {e}") from None
    if values.ndim != 2:
        raise DataError(
            f"{label}: a label of shape {values.shape}; expected one band of 0 (background) "
            "and 255 (building)"
        )
    if values.shape != (height, width):
        raise DataError(
            f"{label}: the label is {values.shape[0]}x{values.shape[1]}, its image {image} is "
            f"{height}x{width}"
        )
    if values.dtype == bool:
        building = values
    else:
        found = np.unique(values)
        if not set(found.tolist()) <= {0, 255}:
            shown = ", ".join(str(v) for v in found[:8]) + (" ..." if len(found) > 8 else "")
            raise DataError(
                f"{label}: label values {shown}; expected 0 (background) and 255 (building)"
            )
        building = values == 255
    skips = []
    components, count = ndimage.label(building, structure=EIGHT_CONNECTED)
    kept = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        y, x = box
        mask = np.zeros(building.shape, np.uint8, order="F")
        mask[box] = components[box] == index
        area = int(np.count_nonzero(mask[box]))
        if area < MIN_COMPONENT_AREA:
            skips.append(
                Skip(
                    str(label),
                    f"component at x={x.start}, y={y.start}",
                    f"component below the smallest area: {area} px < {MIN_COMPONENT_AREA} px",
                )
            )
            continue
        rle = mask_utils.encode(mask)["counts"]
        kept.append((rle, (float(x.start), float(y.start), float(x.stop), float(y.stop)), area))
    if not kept:
        reason = (
            f"all {count} components are under {MIN_COMPONENT_AREA} px"
            if count
            else "no building pixel"
        )
        skips.append(Skip(str(label), image.name, f"image has no instances: {reason}"))
    return height, width, kept, skips
