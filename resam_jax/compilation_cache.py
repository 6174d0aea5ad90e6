"""JAX's persistent compilation cache for the commands: a machine compiles a step once.

Every command (training, evaluation, the studies, prediction) turns it on before its first
compilation: XLA's executables are kept in a folder under the user's cache directory
(`$XDG_CACHE_HOME/resam_jax/jax`, else `~/.cache/resam_jax/jax`) and found again by the next
run that compiles the same program on the same backend and JAX version. The folder is moved
with `--compilation_cache=DIR` (`--compilation-cache` for the prediction commands) or the
environment variable RESAM_JAX_COMPILATION_CACHE, and `off` (or an empty value) turns the
cache off. A folder that cannot be created only turns the cache off, with a warning: the
cache makes a command start faster, never fail.
"""

from __future__ import annotations

import os
from pathlib import Path

from absl import logging

ENV = "RESAM_JAX_COMPILATION_CACHE"
OFF = ("", "off", "none", "0")


def default_directory() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resam_jax" / "jax"


def resolve(directory: str | None) -> Path | None:
    """The cache folder: `directory` when given (None: RESAM_JAX_COMPILATION_CACHE, else the
    default), None when turned off."""
    if directory is None:
        directory = os.environ.get(ENV, str(default_directory()))
    if directory.strip().lower() in OFF:
        return None
    return Path(directory).expanduser()


def enable(directory: str | None = None) -> Path | None:
    """Turns JAX's persistent compilation cache on in `resolve(directory)`; returns the folder
    (None when off or not writable). Call before the first compilation."""
    import jax

    path = resolve(directory)
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        logging.warning("compilation cache off: cannot create %s (%s)", path, e.strerror or e)
        return None
    if not os.access(path, os.W_OK):
        logging.warning("compilation cache off: %s is not writable", path)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every program, also those compiled in under a second: the run's many small functions
    # (post-processing, metrics) add up at start-up.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
