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
from pathlib import Path

from absl import app

from resam_jax.run import cli


def next_steps() -> str:
    """After the demo: how to run the real benchmarks (the help texts live with the code that
    reads the weights and the data)."""
    from resam_jax.data.builders import prepare_help
    from resam_jax.models.sam.checkpoint import conversion_help

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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from resam_jax import run

    config = cli.CONFIG.value
    result = cli.run_command(lambda: run.train_and_evaluate(config, cli.WORKDIR.value))
    if result["preempted"]:  # checkpointed: a scheduler must not take it for a finished run
        sys.exit(cli.PREEMPTED_EXIT_CODE)
    from resam_jax.run import reporting

    if config.data.synthetic_images:
        print(next_steps())
    workdir = Path(cli.WORKDIR.value).expanduser().resolve()
    print(
        f"Outputs in {workdir}: metrics.jsonl, tensorboard/, overlays/, checkpoints/, "
        f"export/lora and export/sam_merged (python -m resam_jax.predict --checkpoint "
        f"{workdir / 'export' / 'sam_merged'} ...)."
        if config.method.mode != "direct"
        else f"Outputs in {workdir}: metrics.jsonl, tensorboard/, overlays/."
    )
    # The run's last lines: its result, once.
    print(reporting.evaluation_table(result["evaluations"]))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
