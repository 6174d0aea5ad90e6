"""What the run commands (resam_jax.main and the experiments) share: the --config, --workdir and
multi-host flags, the one-line errors with exit code 2, and the start of every run."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from absl import flags, logging
from ml_collections import config_flags

T = TypeVar("T")

CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py", lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics, overlays and exports go here")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-host)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (multi-host)")
flags.mark_flags_as_required(["config", "workdir"])


def run_command(job: Callable[[], T]) -> T:
    """The body every run command shares (resam_jax.main and resam_jax.experiments): XLA's
    default flags (parallel.set_default_xla_flags) and the multi-host set-up before anything
    touches a JAX backend, quiet library logs, and a RunError (missing weights, unprepared data,
    a bad config value) as one error line with exit code 2."""
    from resam_jax import parallel

    parallel.set_default_xla_flags()
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from resam_jax.run import reporting
    from resam_jax.run.setup import RunError

    reporting.quiet_library_logs()
    try:
        return job()
    except RunError as e:
        logging.error("%s", e)
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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a one-line error (no traceback) for a bad --config override."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}\nPass --helpfull to see the flags.", file=sys.stderr)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        overrides = " ".join(a for a in argv[1:] if a.startswith("--config."))
        print(f"error: bad config override ({overrides}): {_innermost_message(e)}", file=sys.stderr)
    sys.exit(2)
