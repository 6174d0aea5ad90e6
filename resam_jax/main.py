r"""Train and evaluate ReSAM.

    python -m resam_jax.main --config configs/demo.py --workdir /tmp/resam_demo
    python -m resam_jax.main --config configs/nwpu.py --workdir runs/nwpu [--config.a.b=value ...]

The config file's docstring holds its own command. A workdir with a checkpoint resumes.
Multi-host (GPU clusters): give --coordinator_address, --num_processes and --process_id (or
JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) on every host; Cloud TPU VMs
need none of them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn, TypeVar

from absl import app, flags, logging
from ml_collections import config_flags

T = TypeVar("T")

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<name>.py", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "checkpoints, metrics, overlays and exports go here"
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (multi-host)"
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes (multi-host)")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index (multi-host)")
flags.mark_flags_as_required(["config", "workdir"])


def next_steps() -> str:
    """After the demo: how to run the real benchmarks (the help texts live with the code that
    reads the weights and the data)."""
    from resam_jax.data.builders import prepare_help
    from resam_jax.model.checkpoint import conversion_help

    return (
        "\nThe demo adapted a tiny SAM, pretrained on clean synthetic scenes "
        "(tools/pretrain_tiny_sam.py), to washed-out, speckled synthetic scenes with ReSAM. "
        "To run the real benchmarks with SAM ViT-B:\n"
        f"1. SAM ViT-B weights. {conversion_help('weights/sam_vit_b')}\n"
        f"2. {prepare_help('nwpu_vhr10', 'default', '~/tensorflow_datasets', 'data/NWPU')}\n"
        "3. python -m resam_jax.main --config configs/nwpu.py --workdir runs/nwpu\n"
        "   (configs/whu.py and configs/hrsid.py likewise; --config.method.mode=supervised|direct "
        "for the other rows)\n"
    )


def run_command(job: Callable[[], T]) -> T:
    """The body every run command shares (main, resam_jax.robustness, resam_jax.study):
    XLA's default flags (parallel.set_default_xla_flags) and the multi-host set-up before
    anything touches a JAX backend, quiet library logs, and a RunError (missing weights,
    unprepared data, a bad config value) as one error line with exit code 2."""
    from resam_jax import parallel

    parallel.set_default_xla_flags()
    parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from resam_jax.run import RunError, reporting

    reporting.quiet_library_logs()
    try:
        return job()
    except RunError as e:
        logging.error("%s", e)
        fail(str(e))


def fail(message: str) -> NoReturn:
    """The input is at fault: one error line on stderr, exit code 2 (README "Exit codes")."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from resam_jax import run

    config = _CONFIG.value
    result = run_command(lambda: run.train_and_evaluate(config, _WORKDIR.value))
    if config.data.synthetic_images and not result["preempted"]:
        from resam_jax.run import reporting

        print(next_steps())
        # The demo's last lines: its result (the same table as at the end of the log).
        print(reporting.evaluation_table(result["evaluations"]))


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


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
