r"""Builds a dataset into TFDS array_record files and prints one JSON summary.

    python -m resam_jax.data.prepare --dataset nwpu_vhr10 --manual-dir data/NWPU --data-dir ~/tensorflow_datasets
    python -m resam_jax.data.prepare --dataset hrsid --config inshore --manual-dir data/HRSID --data-dir DIR
    python -m resam_jax.data.prepare --dataset coco_instances --config mine --manual-dir DIR \
        --annotations train=ann/train.json --annotations val=ann/val.json --images imgs

A dataset that is already built is not rebuilt; the summary is read back from its metadata.
With --manual-dir the source is checked first: a build made from other files (another or an
edited annotation file, images added, removed or resized on disk; builders.source_fingerprint)
is refused with the command that rebuilds it (--rebuild), never served stale.
Broken input exits with status 2 and one line naming the file and what was expected.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
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
    source_fingerprint,
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
    rebuild: bool = False,
) -> dict[str, Any]:
    """Builds `dataset` unless it is already built from the same source (`rebuild`: builds it
    again whatever is there), and returns its summary."""
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
        builder_config = next(c for c in builder_cls.BUILDER_CONFIGS if c.name == config)

    data_dir = Path(data_dir).expanduser().resolve()
    target = prepared_dir(data_dir, dataset, config)
    already_built = (target / "dataset_info.json").is_file()
    if already_built and manual_dir is not None and not rebuild:
        source = Path(manual_dir).expanduser().resolve()
        changed = _source_changes(
            load_prepared(data_dir, dataset, config).info.metadata.get("source"),
            source_fingerprint(builder_config, source, builder_cls.DISPLAY_NAME),
        )
        if changed:
            raise DataError(
                f"{dataset}/{config} in {target} was built from other files than {source} holds "
                f"now ({changed}); rebuild it: "
                + _rebuild_command(dataset, config, source, data_dir, annotations, images)
            )
    if (rebuild or not already_built) and manual_dir is None:
        state = "is built" if already_built else "is not built yet"
        raise DataError(f"{dataset}/{config} {state} in {data_dir}; give --manual-dir with the release")  # fmt: skip
    if rebuild or not already_built:
        manual_dir = Path(manual_dir).expanduser().resolve()
        # Before TFDS: its own manual-dir check fails with an assertion and a traceback.
        dataset_root(builder_config, manual_dir, builder_cls.DISPLAY_NAME)
        if not already_built:
            _build(builder_cls, builder_config, data_dir, manual_dir)
        else:  # written beside the old build, which it replaces only once complete
            data_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".rebuild_", dir=data_dir) as build_dir:
                _build(builder_cls, builder_config, Path(build_dir), manual_dir)
                shutil.rmtree(target)
                prepared_dir(Path(build_dir), dataset, config).rename(target)
    return summary(data_dir, dataset, config, built_now=rebuild or not already_built)


def _build(builder_cls, builder_config, data_dir: Path, manual_dir: Path) -> None:
    builder = builder_cls(config=builder_config, data_dir=str(data_dir), file_format="array_record")
    tfds.disable_progress_bar()
    # TFDS announces progress on stdout; the summary must be the only thing printed there.
    with contextlib.redirect_stdout(sys.stderr):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(manual_dir), try_download_gcs=False
            )
        )


def _source_changes(built: dict | None, now: dict) -> str:
    """'' when `now` is the source `built` was made from, else what differs."""
    if built is None:
        return "it was built before sources were fingerprinted"
    changes = []
    for split in sorted(set(built) | set(now)):
        if split not in built or split not in now:
            changes.append(f"split {split} {'added' if split in now else 'removed'}")
            continue
        b, n = built[split], now[split]
        if b["annotation_file"] != n["annotation_file"]:
            changes.append(f"{split}: annotation file {b['annotation_file']} -> {n['annotation_file']}")  # fmt: skip
        elif b["annotation_sha256"] != n["annotation_sha256"]:
            changes.append(f"{split}: {n['annotation_file']} changed")
        if b["image_dir"] != n["image_dir"]:
            changes.append(f"{split}: image folder {b['image_dir']} -> {n['image_dir']}")
        elif b["image_listing_sha256"] != n["image_listing_sha256"]:
            changes.append(f"{split}: files in {n['image_dir']} added, removed or resized")
    return "; ".join(changes)


def _rebuild_command(dataset, config, manual_dir, data_dir, annotations, images) -> str:
    words = ["python -m resam_jax.data.prepare --dataset", dataset, "--config", config,
             "--manual-dir", str(manual_dir), "--data-dir", str(data_dir)]  # fmt: skip
    for split, path in (annotations or {}).items():
        words += ["--annotations", f"{split}={path}"]
    if annotations and images != "images":
        words += ["--images", images]
    return " ".join([*words, "--rebuild"])


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
    parser.add_argument(
        "--rebuild", action="store_true", help="build again even if built (the source changed)"
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
            rebuild=args.rebuild,
        )
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
