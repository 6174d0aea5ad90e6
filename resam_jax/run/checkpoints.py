"""Training checkpoints (orbax), preemption, and the exports written at the end of a run.

WORKDIR/checkpoints/<step>/state    the TrainState (LoRA, optimiser, teacher, SSA queues, ...)
WORKDIR/checkpoints/<step>/data     each host's input-pipeline position (grain)
WORKDIR/export/lora/                the trained LoRA parameters alone (orbax tree)
WORKDIR/export/sam_merged/          the model with LoRA folded in, a plain checkpoint of its
                                    family (resam_jax.models.export_merged), loadable by
                                    `python -m resam_jax.predict --checkpoint`
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

import grain
import grain.checkpoint
import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils


class TrainCheckpoints:
    """Keeps the last `keep` checkpoints of the train state and the data iterator."""

    def __init__(self, directory: str | Path, keep: int):
        self._manager = ocp.CheckpointManager(
            Path(directory).resolve(),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
            },
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, data_iterator: grain.DatasetIterator) -> None:
        """Saves unless this step is already saved (an epoch end on a save interval)."""
        if self._manager.latest_step() == step:
            return
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
            ),
        )

    def restore(self, abstract_state: Any, data_iterator: grain.DatasetIterator) -> Any:
        """The latest train state, shaped and sharded like `abstract_state`; the data iterator
        is moved to where it was."""
        step = self._manager.latest_step()
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
        return restored["state"]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


class PreemptionWatch:
    """Notices SIGTERM (a preempted VM) so the loop can checkpoint and stop between steps.

    With several processes every one must stop at the same step: JAX's preemption sync point
    (the distributed runtime catches SIGTERM itself) decides for all of them.
    """

    def __init__(self):
        self._terminated = threading.Event()
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint after the current step")
        self._terminated.set()

    def should_stop(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._terminated.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def export_lora(directory: str | Path, lora: nnx.State) -> None:
    """The LoRA parameters alone, as a nested orbax tree (block paths as in the model)."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(Path(directory).resolve(), jax.device_get(nnx.to_pure_dict(lora)), force=True)
    checkpointer.wait_until_finished()
