"""The plots: the accuracy-cost frontier (R@1 against online MACs per query, log scale, one point per method)
and the measured online cost at scale (seconds per query against gallery size, from `harness cost --gallery`)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

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
