"""Training curves: per trained method, the loss (total and each named term) and validation R@1 per epoch, the
selected epoch marked; from results.json's history (`methods.<name>.training`: `history`, each epoch's
`loss_<term>` means and `validation_R1`; `best_epoch`, `selection`). Nothing is recomputed."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.report.leaderboard import Run


@dataclass
class TrainingCurve:
    label: str  # the method, and its run where the report has several
    history: list[dict]
    best_epoch: int
    selection: str  # "validation" or "last-epoch": how best_epoch was chosen

    @property
    def key(self) -> str:
        """A file-name-safe name (the LaTeX report's PDF beside it)."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.label).strip("_") or "method"

    def terms(self) -> list[str]:
        """The loss terms, total first, in the order the method returns them."""
        names = [k for k in self.history[0] if k.startswith("loss_")]
        return sorted(names, key=lambda k: k != "loss_total")

    def validation(self) -> list[tuple[int, float]]:
        return [(int(e["epoch"]), float(e["validation_R1"])) for e in self.history if "validation_R1" in e]

    @property
    def selected_by(self) -> str:
        # a training without a validation split keeps its last epoch whatever the suite's selection
        return "best validation R@1" if self.selection == "validation" and self.validation() else "last epoch"


def training_curves(runs: list[Run]) -> list[TrainingCurve]:
    curves = []
    for run in runs:
        for name, method in run.results.get("methods", {}).items():
            training = method.get("training") or {}
            history = [entry for entry in training.get("history") or [] if "epoch" in entry]
            if history:
                label = f"{name} [{run.name}]" if len(runs) > 1 else name
                curves.append(TrainingCurve(label, history, int(training.get("best_epoch", history[-1]["epoch"])),
                                            training.get("selection", "last-epoch")))
    return curves
