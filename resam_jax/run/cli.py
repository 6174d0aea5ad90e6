"""What the run commands (resam_jax.main and the experiments) share: the --config, --workdir and
multi-host flags, the one-line errors with exit code 2, and the start of every run."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

from absl import flags
from ml_collections import config_flags

T = TypeVar("T")

# A run stopped by SIGTERM after saving its checkpoint: 128 + SIGTERM, as a shell reports it.
PREEMPTED_EXIT_CODE = 143

CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics, overlays and exports go here")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-host)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (multi-host)")
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", None,
    "JAX's persistent compilation cache folder; 'off' turns it off (default: "
    "$RESAM_JAX_COMPILATION_CACHE, else ~/.cache/resam_jax/jax)",
)  # fmt: skip
VERBOSE = flags.DEFINE_bool(
    "verbose", False, "every library's log lines and TFDS's output too (default: the run's own)"
)
flags.mark_flags_as_required(["config", "workdir"])
_HELP = ("--help", "-h", "-?", "--helpfull", "--helpshort")


def run_command(job: Callable[[], T]) -> T:
    """The body every run command shares (resam_jax.main and resam_jax.experiments): XLA's
    default flags (parallel.set_default_xla_flags), the multi-host set-up and the persistent
    compilation cache (resam_jax.compilation_cache) before anything touches a JAX backend, the
    compiler's freed heap handed back after each compilation
    (parallel.release_memory_after_compiles), quiet library logs, and a RunError (missing
    weights, unprepared data, a bad config value) as one error line with exit code 2."""
    from resam_jax import compilation_cache, parallel

    parallel.set_default_xla_flags()
    parallel.release_memory_after_compiles()
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    compilation_cache.enable(_COMPILATION_CACHE.value)
    from resam_jax.run import reporting
    from resam_jax.run.setup import RunError

    reporting.quiet_library_logs(VERBOSE.value)
    try:
        return job()
    except RunError as e:
        fail(str(e))


def fail(message: str) -> NoReturn:
    """The input is at fault: one error line on stderr, exit code 2 (docs/training.md, exit
    codes)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _innermost_message(error: BaseException) -> str:
    """ml_collections wraps a KeyError's message in an AttributeError; unwrap it for people."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    return str(error.args[0] if error.args else error)


def _config_for_help(argv: list[str]):
    """(the --config file's config, its name), or the defaults every config starts from."""
    import importlib.util

    from resam_jax.config import base_config

    for index, arg in enumerate(argv):
        path = arg.partition("=")[2] if arg.startswith("--config=") else None
        if arg == "--config" and index + 1 < len(argv):
            path = argv[index + 1]
        if path and Path(path).is_file():
            spec = importlib.util.spec_from_file_location("_help_config", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module.get_config(), path
    return base_config(), "resam_jax/config.py"


def usage(argv: list[str]) -> str:
    """The command's docstring, its flags, and every --config field with its value."""
    from resam_jax.run.reporting import flat_config

    lines = [(sys.modules["__main__"].__doc__ or "").strip(), "", "flags:"]
    for module, defined in sorted(flags.FLAGS.flags_by_module_dict().items()):
        if module.startswith("resam_jax") or module == sys.argv[0] or module == "__main__":
            lines += [f"  --{f.name}: {f.help}" for f in defined]
    config, source = _config_for_help([a for a in argv if a not in _HELP])
    lines += ["", f"config fields, --config.FIELD=VALUE overrides one (values of {source}):"]
    lines += [
        f"  --config.{name}={value!r}" for name, value in flat_config(config.to_dict()).items()
    ]
    return "\n".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error (no traceback) for a bad --config override,
    and --help listing the config fields."""
    if any(arg in _HELP for arg in argv[1:]):
        print(usage(argv))
        sys.exit(0)
    try:
        remaining = flags.FLAGS(argv)
        if CONFIG.present:
            CONFIG.value.keys()  # a config file that failed to load raises when first read
        return remaining
    except OSError as e:
        filename = config_flags.get_config_filename(flags.FLAGS["config"])
        if not Path(filename).is_file():
            print(f"error: --config {filename} does not exist", file=sys.stderr)
        else:
            print(f"error: cannot load --config {filename}: {e.__cause__ or e}", file=sys.stderr)
    except SyntaxError as e:
        print(f"error: --config {e.filename}, line {e.lineno}: {e.msg}", file=sys.stderr)
    except flags.Error as e:
        print(f"error: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
        print(f"error: bad config override ({overrides}): {_innermost_message(e)}", file=sys.stderr)
    sys.exit(2)
