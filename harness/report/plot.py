"""The plots: the accuracy-cost frontier (R@1 against online MACs per query, log scale, one point per method),
the measured online cost at scale (seconds per query against gallery size, from `harness cost --gallery`) and
each trained method's training curves (loss terms and validation R@1 per epoch)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from harness.report.curves import TrainingCurve  # noqa: E402
from harness.report.leaderboard import Leaderboard  # noqa: E402


def frontier_figure(board: Leaderboard):
    points = board.plot_points()
    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    for label, gmac, r1 in points:
        axes.scatter([gmac], [r1], s=24)
        axes.annotate(label, (gmac, r1), textcoords="offset points", xytext=(4, 3), fontsize=7)
    axes.set_xscale("log")
    axes.set_xlabel(f"online GMAC per query (gallery of {board.gallery})")
    axes.set_ylabel("R@1")
    axes.set_title(f"{board.benchmark} {board.split} {board.direction}: accuracy vs cost", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    return figure


def scale_figure(cost: dict):
    """Measured time of one text query against the gallery size (log-log), one line per method; sizes that
    were not measured are left out (the table says why)."""
    figure, axes = plt.subplots(figsize=(5.5, 3.6))
    for name, record in cost["methods"].items():
        points = [(p["gallery"], p["one_query_s"]) for p in record.get("scale", []) if p["status"] == "measured"]
        if points:
            axes.plot(*zip(*points), marker="o", markersize=3, label=name)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("gallery (stored videos)")
    axes.set_ylabel("seconds per text query (measured)")
    axes.set_title("online retrieval cost at scale", fontsize=9)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=6)
    figure.tight_layout()
    return figure


def curve_figure(curve: TrainingCurve):
    """Two panels: the loss terms per epoch (total in bold) and validation R@1 per epoch; a dashed line at the
    selected epoch in both."""
    figure, (losses, recall) = plt.subplots(1, 2, figsize=(7.5, 2.6))
    for term in curve.terms():
        points = [(int(e["epoch"]), float(e[term])) for e in curve.history if term in e]
        losses.plot(*zip(*points), marker="o", markersize=3, linewidth=2.0 if term == "loss_total" else 1.0,
                    label=term.removeprefix("loss_"))
    losses.set_ylabel("training loss (epoch mean)")
    losses.legend(fontsize=6)
    validation = curve.validation()
    if validation:
        recall.plot(*zip(*validation), marker="o", markersize=3, color="tab:green")
        best = [(epoch, r1) for epoch, r1 in validation if epoch == curve.best_epoch]
        if best:
            recall.scatter(*zip(*best), s=60, facecolors="none", edgecolors="black", zorder=3)
    else:
        recall.text(0.5, 0.5, "no validation split", ha="center", va="center", transform=recall.transAxes,
                    fontsize=8, color="#666")
    recall.set_ylabel("validation R@1")
    for axes in (losses, recall):
        axes.axvline(curve.best_epoch, color="black", linestyle="--", linewidth=0.8)
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(True, alpha=0.3)
    figure.suptitle(f"{curve.label}: selected epoch {curve.best_epoch} ({curve.selected_by})", fontsize=9)
    figure.tight_layout()
    return figure


def svg(figure) -> str:
    """A figure as an inline SVG element (text kept as text; matplotlib escapes it for XML)."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg")
    plt.close(figure)
    text = buffer.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside the HTML


def pdf(figure, path: Path) -> Path:
    figure.savefig(path, format="pdf")
    plt.close(figure)
    return path
