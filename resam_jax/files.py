"""Writing an output file so that a failure never leaves it half-written."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def staged(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to: renamed to `path` when the block succeeds,
    removed when it fails (the rename is atomic on one file system)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield staging
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
