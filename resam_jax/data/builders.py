"""TFDS builders (array_record) for the published remote-sensing benchmarks and for any
COCO-style instance dataset.

Each builder is a table of where the published release keeps its files (a `LayoutConfig`);
reading, validation and writing are one code path (`CocoLayoutBuilder` + `coco.read_split`, or
`rasters.read_label_rasters` for a release of label rasters).

Every split is validated completely before anything is written, so a broken file fails
the build up front instead of half-way. Records are written in generation order
(`disable_shuffling`) and the dataset metadata keeps, per split, the image id and instance
count of every record: the input pipeline chunks images by instance count without
reading the records, and checks each record it reads against that index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from resam_jax.data.coco import DataError, SplitContents, read_split
from resam_jax.data.rasters import raster_files, read_label_rasters

DATA_VERSION = "1.0.0"


@dataclasses.dataclass(frozen=True)
class SplitLayout:
    """Where one split lives, relative to the dataset root (absolute paths also work).

    Several candidates are allowed where releases differ; the first that exists is used.
    """

    annotation_files: tuple[str, ...]
    image_dirs: tuple[str, ...]
    excluded_image_ids: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class RasterSplitLayout:
    """Where one split of a label-raster release lives: image tiles and same-named 0/255 label
    tiles (relative to the dataset root)."""

    image_dir: str
    label_dir: str


@dataclasses.dataclass(eq=False)
class LayoutConfig(tfds.core.BuilderConfig):
    # Name of the release's top folder ("NWPU"): the manual dir may be that folder or its parent.
    root_name: str = ""
    splits: Mapping[str, SplitLayout] = dataclasses.field(default_factory=dict)
    # The same release as label rasters, read when the folder holds no annotation file.
    raster_splits: Mapping[str, RasterSplitLayout] = dataclasses.field(default_factory=dict)


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            # Encoded bytes as released (JPEG/PNG RGB) or re-encoded lossless PNG after RGB conversion.
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image_id": tfds.features.Scalar(np.int64),
            "file_name": tfds.features.Text(),
            "instances": tfds.features.Sequence(
                {
                    # Compressed COCO RLE at full image resolution: a few hundred bytes per instance,
                    # decoded by pycocotools in the input pipeline.
                    "mask_rle": tfds.features.Text(),
                    "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),  # xyxy pixels
                    "area": tfds.features.Scalar(np.int64),
                    "annotation_id": tfds.features.Scalar(np.int64),
                    "category_id": tfds.features.Scalar(np.int64),
                }
            ),
        }
    )


class CocoLayoutBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared by every dataset: validate the published files, then write them."""

    VERSION = tfds.core.Version(DATA_VERSION)
    RELEASE_NOTES = {DATA_VERSION: "Class-agnostic instances with RLE masks; validated COCO input."}
    DISPLAY_NAME = ""

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self.DISPLAY_NAME}: images with class-agnostic instance masks (COCO RLE) and boxes.",
            features=_features(),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        manual_dir = Path(dl_manager.manual_dir)
        contents = read_layout(self.builder_config, manual_dir, self.DISPLAY_NAME)
        self.info.metadata["source"] = source_fingerprint(
            self.builder_config, manual_dir, self.DISPLAY_NAME
        )
        self.info.metadata["splits"] = {
            split: {
                "image_ids": [image.image_id for image in c.images],
                "num_instances": [len(image.instances) for image in c.images],
                "summary": c.summary(),
                "skipped": [dataclasses.asdict(s) for s in c.skipped],
            }
            for split, c in contents.items()
        }
        return {split: self._generate_examples(c) for split, c in contents.items()}

    def _generate_examples(self, contents: SplitContents):
        for index, image in enumerate(contents.images):
            # Integer keys in generation order keep the records aligned with the metadata index.
            yield (
                index,
                {
                    "image": _encoded_rgb(image.path),
                    "image_id": image.image_id,
                    "file_name": image.file_name,
                    "instances": {
                        "mask_rle": [i.rle.decode("ascii") for i in image.instances],
                        "bbox": np.array([i.bbox for i in image.instances], np.float32).reshape(
                            -1, 4
                        ),
                        "area": [i.area for i in image.instances],
                        "annotation_id": [i.annotation_id for i in image.instances],
                        "category_id": [i.category_id for i in image.instances],
                    },
                },
            )


def _encoded_rgb(path: Path) -> bytes:
    """The file's own bytes when it is already RGB JPEG/PNG, else a lossless RGB PNG."""
    with PIL.Image.open(path) as image:
        if image.format in ("JPEG", "PNG") and image.mode == "RGB":
            return path.read_bytes()
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        return buffer.getvalue()


def dataset_root(config: LayoutConfig, manual_dir: Path, display_name: str) -> Path:
    """The folder holding the layout: `manual_dir` itself or its `root_name` child."""
    return find_layout(config, manual_dir, display_name)[0]


def find_layout(config: LayoutConfig, manual_dir: Path, display_name: str) -> tuple[Path, bool]:
    """(the folder holding the layout, whether it holds label rasters): annotation files are
    looked for first, then the label folder of the first raster split."""
    first = next(iter(config.splits.values()))
    candidates = [manual_dir] + ([manual_dir / config.root_name] if config.root_name else [])
    for root in candidates:
        if any((root / f).is_file() for f in first.annotation_files):
            return root, False
    first_raster = next(iter(config.raster_splits.values()), None)
    for root in candidates if first_raster else ():
        if (root / first_raster.label_dir).is_dir():
            return root, True
    expected = " or ".join(str(root / first.annotation_files[0]) for root in candidates)
    if first_raster:
        expected += ", or label rasters in " + " or ".join(
            f"{root / first_raster.image_dir}/*.tif and {root / first_raster.label_dir}/*.tif"
            for root in candidates
        )
    if not manual_dir.is_dir():
        raise DataError(
            f"manual dir {manual_dir} does not exist; it should hold the {display_name} release: {expected}"
        )
    raise DataError(
        f"manual dir {manual_dir} does not have the {display_name} layout: expected {expected}"
    )


def read_layout(
    config: LayoutConfig, manual_dir: Path, display_name: str
) -> dict[str, SplitContents]:
    """Validates every split of the layout; raises `DataError` before anything is written."""
    root, rasters = find_layout(config, manual_dir, display_name)
    contents = {}
    if rasters:
        located = {
            split: _locate_rasters(root, split, r) for split, r in config.raster_splits.items()
        }
        for split, (image_dir, label_dir) in located.items():
            contents[split] = read_label_rasters(image_dir, label_dir)
    else:
        located = {split: _locate_split(root, split, s) for split, s in config.splits.items()}
        for split, (annotation_file, image_dir) in located.items():
            contents[split] = read_split(
                annotation_file,
                image_dir,
                excluded_image_ids=config.splits[split].excluded_image_ids,
            )
    for split, c in contents.items():
        if not c.images:
            reasons = c.summary()["skipped"]["by_reason"]
            detail = (
                ", ".join(f"{r['count']} x {kind}" for kind, r in reasons.items())
                or "the file lists no images"
            )
            raise DataError(f"{c.annotation_file}: split '{split}' has no usable image ({detail})")
    return contents


def source_fingerprint(
    config: LayoutConfig, manual_dir: Path, display_name: str
) -> dict[str, dict[str, str]]:
    """What a build reads, per split: the annotation file (path and SHA-256) and the image
    folder (path and a SHA-256 of its file names and byte sizes). Another annotation file, an
    edited one, or images added, removed or replaced by a file of another size change it.
    For label rasters the label folder stands for the annotation file, its SHA-256 taken over
    the label files' names and contents."""
    root, rasters = find_layout(config, manual_dir, display_name)
    fingerprint = {}
    for split in config.raster_splits if rasters else config.splits:
        if rasters:
            image_dir, annotation = _locate_rasters(root, split, config.raster_splits[split])
            annotation_sha256 = hashlib.sha256()
            for path in raster_files(annotation):
                annotation_sha256.update(f"{path.name}\0".encode() + path.read_bytes())
        else:
            annotation, image_dir = _locate_split(root, split, config.splits[split])
            annotation_sha256 = hashlib.sha256(annotation.read_bytes())
        listing = hashlib.sha256()
        for path in sorted(p for p in image_dir.rglob("*") if p.is_file()):
            listing.update(f"{path.relative_to(image_dir)}\0{path.stat().st_size}\n".encode())
        fingerprint[split] = {
            "annotation_file": str(annotation.resolve()),
            "annotation_sha256": annotation_sha256.hexdigest(),
            "image_dir": str(image_dir.resolve()),
            "image_listing_sha256": listing.hexdigest(),
        }
    return fingerprint


def _locate_split(root: Path, split: str, layout: SplitLayout) -> tuple[Path, Path]:
    annotation = next((root / f for f in layout.annotation_files if (root / f).is_file()), None)
    if annotation is None:
        tried = ", ".join(str(root / f) for f in layout.annotation_files)
        raise DataError(
            f"split '{split}': expected the annotation file {tried}, but it does not exist"
        )
    image_dir = next((root / d for d in layout.image_dirs if (root / d).is_dir()), None)
    if image_dir is None:
        tried = ", ".join(str(root / d) for d in layout.image_dirs)
        raise DataError(
            f"split '{split}': expected the image folder {tried}, but it does not exist"
        )
    return annotation, image_dir


def _locate_rasters(root: Path, split: str, layout: RasterSplitLayout) -> tuple[Path, Path]:
    image_dir, label_dir = root / layout.image_dir, root / layout.label_dir
    for kind, folder in (("image", image_dir), ("label", label_dir)):
        if not folder.is_dir():
            raise DataError(
                f"split '{split}': expected the {kind} folder {folder} of the label-raster "
                "layout, but it does not exist"
            )
    return image_dir, label_dir


class NwpuVhr10(CocoLayoutBuilder):
    """NWPU VHR-10 positive set (650 optical VHR images) with instance polygons."""

    DISPLAY_NAME = "NWPU VHR-10"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point the manual dir at NWPU/ (or its parent) holding Images/<file_name> and "
        "Annotations/NWPU_instances_{train,val}.json (github chaozhong2010/VHR-10_dataset_coco)."
    )
    BUILDER_CONFIGS = [
        LayoutConfig(
            name="default",
            root_name="NWPU",
            splits={
                split: SplitLayout((f"Annotations/NWPU_instances_{split}.json",), ("Images",))
                for split in ("train", "val")
            },
        )
    ]


class WhuBuilding(CocoLayoutBuilder):
    """WHU aerial building tiles (512x512); tiles without buildings are skipped. The official
    release (label rasters) or the COCO JSON of the public code."""

    DISPLAY_NAME = "WHU building"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point the manual dir at WHU/ (or its parent) holding the official release, "
        "{train,val,test}/image/*.tif with {train,val,test}/label/*.tif (0/255), or the public "
        "code's annotations/WHU_building_{train,val,test}.json with images/{train,val,test}/image/"
        "<file_name> ({train,val,test}/image/ is accepted too)."
    )
    BUILDER_CONFIGS = [
        LayoutConfig(
            name="default",
            root_name="WHU",
            splits={
                split: SplitLayout(
                    (f"annotations/WHU_building_{split}.json",),
                    # The public ReSAM code reads <root>/<split>/image; PointSAM's README nests it under images/.
                    (f"images/{split}/image", f"{split}/image"),
                )
                for split in ("train", "val", "test")
            },
            raster_splits={
                split: RasterSplitLayout(f"{split}/image", f"{split}/label")
                for split in ("train", "val", "test")
            },
        )
    ]


# Inshore images the published code drops as known-bad (PointSAM datasets/HRSID.py).
_HRSID_INSHORE_BAD = {"train": (351, 375, 376), "test": (166,)}


def _hrsid_config(name: str) -> LayoutConfig:
    return LayoutConfig(
        name=name,
        root_name="HRSID",
        splits={
            split: SplitLayout(
                # HRSID's own release names the full-set files train2017/test2017.
                (f"Annotations/{name}/{name}_{split}.json",)
                + ((f"Annotations/all/{split}2017.json",) if name == "all" else ()),
                ("Images",),
                excluded_image_ids=_HRSID_INSHORE_BAD[split] if name == "inshore" else (),
            )
            for split in ("train", "test")
        },
    )


class Hrsid(CocoLayoutBuilder):
    """HRSID SAR ship chips (800x800); the JSON names .jpg files that are released as .png."""

    DISPLAY_NAME = "HRSID"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point the manual dir at HRSID/ (or its parent) holding Images/ and "
        "Annotations/<config>/<config>_{train,test}.json for config inshore, offshore or all."
    )
    BUILDER_CONFIGS = [_hrsid_config(name) for name in ("inshore", "offshore", "all")]


class CocoInstances(CocoLayoutBuilder):
    """A user's own COCO-style instance data: an images folder and one JSON per split."""

    DISPLAY_NAME = "COCO instances"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Point the manual dir at a folder holding images/ and annotations/{train,val}.json, "
        "or describe other paths with coco_instances_config()."
    )
    BUILDER_CONFIGS = [
        LayoutConfig(
            name="default",
            splits={
                split: SplitLayout((f"annotations/{split}.json",), ("images",))
                for split in ("train", "val")
            },
        )
    ]


def coco_instances_config(
    name: str, annotations: Mapping[str, str], images: str = "images"
) -> LayoutConfig:
    """A `coco_instances` config: split -> JSON file, one images folder (relative to the manual dir or absolute)."""
    if not annotations:
        raise DataError("coco_instances needs at least one split=annotation.json")
    return LayoutConfig(
        name=name,
        splits={split: SplitLayout((path,), (images,)) for split, path in annotations.items()},
    )


BUILDERS: dict[str, type[CocoLayoutBuilder]] = {
    "nwpu_vhr10": NwpuVhr10,
    "whu_building": WhuBuilding,
    "hrsid": Hrsid,
    "coco_instances": CocoInstances,
}


def prepared_dir(data_dir: Path, dataset: str, config: str) -> Path:
    return Path(data_dir) / dataset / config / DATA_VERSION


def prepare_help(
    dataset: str, config: str, data_dir: str | Path, manual_dir: str | Path = "DIR"
) -> str:
    """Where to get a dataset and how to prepare it: the one place that says it."""
    builder = BUILDERS.get(dataset)
    where = f"{builder.DISPLAY_NAME}: {builder.MANUAL_DOWNLOAD_INSTRUCTIONS} " if builder else ""
    return (
        f"{where}Then run once:\n  python -m resam_jax.data.prepare --dataset {dataset} "
        f"--config {config} --manual-dir {manual_dir} --data-dir {data_dir}"
    )


def load_prepared(data_dir: Path, dataset: str, config: str) -> tfds.core.DatasetBuilder:
    """A built dataset, read through the files alone (no registry lookup, no TensorFlow)."""
    path = prepared_dir(data_dir, dataset, config)
    if not (path / "dataset_info.json").is_file():
        raise DataError(
            f"dataset {dataset}/{config} is not built: expected {path}. "
            + prepare_help(dataset, config, data_dir)
        )
    return tfds.builder_from_directory(path)
