"""The accuracy-cost frontier: R@1 against online MACs per query (log scale), one point per method."""

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


def frontier_svg(board: Leaderboard) -> str:
    """The plot as an inline SVG element (text kept as text; matplotlib escapes it for XML)."""
    figure = frontier_figure(board)
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(buffer, format="svg")
    plt.close(figure)
    svg = buffer.getvalue()
    return svg[svg.index("<svg"):]  # drop the XML prolog and doctype: the SVG sits inside the HTML


def frontier_pdf(board: Leaderboard, path: Path) -> Path:
    figure = frontier_figure(board)
    figure.savefig(path, format="pdf")
    plt.close(figure)
    return path
