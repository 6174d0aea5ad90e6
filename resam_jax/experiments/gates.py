"""The two gates the real-data study must pass before its result says anything about ReSAM.

- premise: on the adaptation (TARGET) images, ReSAM's training targets (Requery from the
  refined masks' boxes) beat the teacher's own point masks by PREMISE_MARGIN IoU points; if
  not, self-training learns from labels worse than what the model predicts already;
- headroom: under every shift studied, Supervised (GT masks, same LoRA, same steps) ends
  HEADROOM_MARGIN IoU points above Direct SAM; if not, no self-training can show a gain.

A failed gate is a statement about the source model or the shift, not about the method:
improve those, not the method (docs/study.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

PREMISE_MARGIN = 2.0  # IoU points, targets over point masks
HEADROOM_MARGIN = 5.0  # IoU points, Supervised over Direct SAM


@dataclasses.dataclass(frozen=True)
class Gate:
    name: str
    value: float  # IoU points above the reference
    required: float
    detail: str

    @property
    def passed(self) -> bool:
        return self.value >= self.required

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"{self.name} gate: {verdict}: {self.detail}: {self.value:+.1f} IoU points (needs >= {self.required:+.1f})"  # fmt: skip


def premise_gate(percent: Mapping[str, float]) -> Gate:
    """From resam_jax.diagnose's per-stage IoU (percent)."""
    targets, point = percent["requery_refined"], percent["point"]
    return Gate(
        "premise", targets - point, PREMISE_MARGIN,
        f"ReSAM's targets {targets:.1f} vs the point masks {point:.1f} IoU",
    )  # fmt: skip


def headroom_gates(results: Mapping[str, Mapping[str, Any]]) -> list[Gate]:
    """From resam_jax.study's results (per shift, per row): one gate per shift that has both
    the Direct SAM and the Supervised row."""
    gates = []
    for shift, rows in results.items():
        if "direct" in rows and "supervised" in rows:
            direct = 100 * rows["direct"]["final"]["iou"]
            supervised = 100 * rows["supervised"]["final"]["iou"]
            gates.append(
                Gate(
                    f"headroom ({shift})",
                    supervised - direct,
                    HEADROOM_MARGIN,
                    f"Supervised {supervised:.2f} vs Direct SAM {direct:.2f} IoU",
                )  # fmt: skip
            )
    return gates
