r"""Builds a dataset into TFDS array_record files and prints one JSON summary.

    python -m resam_jax.data.prepare --dataset nwpu_vhr10 --manual-dir data/NWPU --data-dir ~/tensorflow_datasets
    python -m resam_jax.data.prepare --dataset hrsid --config inshore --manual-dir data/HRSID --data-dir DIR
    python -m resam_jax.data.prepare --dataset coco_instances --config mine --manual-dir DIR \
        --annotations train=ann/train.json --annotations val=ann/val.json --images imgs

A dataset that is already built is not rebuilt; the summary is read back from its metadata.
Broken input exits with status 2 and one line naming the file and what was expected.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from resam_jax.data.builders import (
    BUILDERS,
    coco_instances_config,
    dataset_root,
    load_prepared,
    prepared_dir,
)
from resam_jax.data.coco import DataError


def prepare(
    dataset: str,
    *,
    data_dir: Path,
    manual_dir: Path | None,
    config: str | None = None,
    annotations: Mapping[str, str] | None = None,
    images: str = "images",
) -> dict[str, Any]:
    """Builds `dataset` unless it is already built, and returns its summary."""
    if dataset not in BUILDERS:
        raise DataError(f"unknown dataset {dataset!r}; expected one of {', '.join(BUILDERS)}")
    builder_cls = BUILDERS[dataset]
    known = [c.name for c in builder_cls.BUILDER_CONFIGS]
    if annotations:
        if dataset != "coco_instances":
            raise DataError(
                f"--annotations describes a coco_instances layout; {dataset} has a fixed layout"
            )
        if not config or config in known:
            raise DataError(
                f"--annotations needs a new --config name for the data set (not {', '.join(known)})"
            )
        builder_config = coco_instances_config(config, annotations, images)
    else:
        config = config or known[0]
        if config not in known:
            raise DataError(
                f"unknown config {config!r} for {dataset}; expected one of {', '.join(known)}"
            )
        builder_config = config

    data_dir = Path(data_dir).expanduser().resolve()
    already_built = (prepared_dir(data_dir, dataset, config) / "dataset_info.json").is_file()
    if not already_built:
        if manual_dir is None:
            raise DataError(
                f"{dataset}/{config} is not built yet in {data_dir}; give --manual-dir with the release"
            )
        manual_dir = Path(manual_dir).expanduser().resolve()
        builder = builder_cls(
            config=builder_config, data_dir=str(data_dir), file_format="array_record"
        )
        # Before TFDS: its own manual-dir check fails with an assertion and a traceback.
        dataset_root(builder.builder_config, manual_dir, builder_cls.DISPLAY_NAME)
        tfds.disable_progress_bar()
        # TFDS announces progress on stdout; the summary must be the only thing printed there.
        with contextlib.redirect_stdout(sys.stderr):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    manual_dir=str(manual_dir), try_download_gcs=False
                )
            )
    return summary(data_dir, dataset, config, built_now=not already_built)


def summary(data_dir: Path, dataset: str, config: str, *, built_now: bool) -> dict[str, Any]:
    splits = load_prepared(data_dir, dataset, config).info.metadata["splits"]
    return {
        "dataset": dataset,
        "config": config,
        "path": str(prepared_dir(data_dir, dataset, config)),
        "built_now": built_now,
        "splits": {name: split["summary"] for name, split in splits.items()},
        "report": str(prepared_dir(data_dir, dataset, config) / "metadata.json"),
    }


def _split_path(text: str) -> tuple[str, str]:
    split, sep, path = text.partition("=")
    if not sep or not split or not path:
        raise argparse.ArgumentTypeError(f"expected SPLIT=PATH, got {text!r}")
    return split, path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resam_jax.data.prepare", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--dataset", required=True, choices=sorted(BUILDERS))
    parser.add_argument(
        "--config",
        help="builder config (hrsid: inshore|offshore|all); a new name for coco_instances",
    )
    parser.add_argument(
        "--manual-dir", type=Path, help="folder holding the published release (needed to build)"
    )
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="where the TFDS files are written"
    )
    parser.add_argument(
        "--annotations",
        type=_split_path,
        action="append",
        metavar="SPLIT=JSON",
        help="coco_instances only: one per split, relative to --manual-dir or absolute",
    )
    parser.add_argument(
        "--images", default="images", help="coco_instances only: images folder (default: images)"
    )
    args = parser.parse_args(argv)
    try:
        result = prepare(
            args.dataset,
            config=args.config,
            manual_dir=args.manual_dir,
            data_dir=args.data_dir,
            annotations=dict(args.annotations) if args.annotations else None,
            images=args.images,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
