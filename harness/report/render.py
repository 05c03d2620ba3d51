"""Leaderboards -> HTML (one self-contained file: plots as inline SVG, retrieved videos as embedded JPEG, under
REPORT_BUDGET bytes), LaTeX (booktabs; the plots as PDF beside it) and Markdown, through the jinja2 templates
in templates/. Every name and caption is escaped for its format."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from harness.report.curves import TrainingCurve, training_curves
from harness.report.leaderboard import Cell, Leaderboard, Run
from harness.report.plot import curve_figure, frontier_figure, pdf, scale_figure, svg
from harness.report.strips import FRAMES_PER_STRIP, REPORT_BUDGET, drop_images, retrieved_views
from harness.storage.files import atomic_write

FORMATS = ("html", "tex", "md")

_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "<": r"\textless{}", ">": r"\textgreater{}", "×": r"$\times$", "Δ": r"$\Delta$"}
_LATEX_PATTERN = re.compile("|".join(re.escape(c) for c in _LATEX_SPECIAL))


def latex_escape(text: object) -> str:
    return _LATEX_PATTERN.sub(lambda m: _LATEX_SPECIAL[m.group()], str(text))


def markdown_escape(text: object) -> str:
    """Safe inside a Markdown table cell: HTML special characters, pipes and emphasis markers."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([|*_`\\\[\]])", r"\\\1", text)


def cell_html(cell: Cell) -> Markup:
    text = escape(cell.text)
    if cell.mark == "best":
        text = Markup("<strong>%s</strong>") % text
    elif cell.mark == "second":
        text = Markup("<u>%s</u>") % text
    return text + (Markup("&dagger;") if cell.flag else Markup(""))


def cell_tex(cell: Cell) -> str:
    text = latex_escape(cell.text)
    if cell.mark == "best":
        text = rf"\textbf{{{text}}}"
    elif cell.mark == "second":
        text = rf"\underline{{{text}}}"
    return text + (r"$^\dagger$" if cell.flag else "")


def cell_md(cell: Cell) -> str:
    text = markdown_escape(cell.text)
    if cell.mark == "best":
        text = f"**{text}**"
    elif cell.mark == "second":
        text = f"<u>{text}</u>"
    return text + ("†" if cell.flag else "")


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.report", "templates"), autoescape=autoescape,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(tex=latex_escape, md=markdown_escape, cell_html=cell_html, cell_tex=cell_tex, cell_md=cell_md)
    return env


def provenance(runs: list[Run]) -> list[dict]:
    return [{"run": str(run.folder), "suite": run.results.get("suite", {}).get("name", ""),
             "code_version": run.results.get("code_version", ""), "started": run.results.get("started", ""),
             "device": run.results.get("environment", {}).get("device", "")} for run in runs]


def scale_rows(cost: dict | None) -> dict | None:
    """The measured online cost at scale (`harness cost --gallery` output) as table rows."""
    if not cost or not any(record.get("scale") for record in cost["methods"].values()):
        return None
    rows = []
    for name, record in cost["methods"].items():
        for p in record.get("scale", []):
            measured = p["status"] == "measured"
            rows.append({"method": name, "gallery": f"{p['gallery']:,}",
                         "gmac": f"{p['online_macs'] / 1e9:.4g}" if p["online_macs"] is not None else "",
                         "one": f"{p['one_query_s'] * 1e3:.2f}" if measured else "",
                         "batch": f"{p['per_query_in_batch_s'] * 1e3:.2f}"
                                  if measured and p["per_query_in_batch_s"] is not None else "",
                         "peak": f"{p['peak_mib']:.0f}" if measured and p["peak_mib"] is not None else "",
                         "note": f"{p['status']}: {p['reason']}" if not measured else
                         "; ".join(filter(None, ["features streamed from disk" if p.get("storage") == "disk" else "",
                                                 p["reason"]]))})
    first = next(p for r in cost["methods"].values() for p in r.get("scale", []))
    return {"rows": rows, "batch": first["batch"], "device": cost.get("environment", {}).get("device_name", "")}


def html_report(boards: list[Leaderboard], context: dict, curves: list[TrainingCurve], cost: dict | None) -> str:
    """The HTML page; where it would pass REPORT_BUDGET, the retrieved-video images shown last are left out."""
    template = _environment(True).get_template("report.html.j2")
    page = dict(context, plots={b.key: Markup(svg(frontier_figure(b))) for b in boards if b.plot_points()},
                scale_plot=Markup(svg(scale_figure(cost))) if context["scale"] else "",
                curves=[{"label": c.label, "plot": Markup(svg(curve_figure(c)))} for c in curves],
                strip_frames=FRAMES_PER_STRIP, budget_mb=f"{REPORT_BUDGET / 1e6:g}")
    retrieved = retrieved_views(boards)
    while True:
        text = template.render(**page, retrieved=retrieved)
        excess = len(text.encode()) - REPORT_BUDGET
        if excess <= 0 or not drop_images(retrieved, excess):
            return text


def write_report(boards: list[Leaderboard], runs: list[Run], formats: list[str], output: Path,
                 cost: dict | None = None) -> list[Path]:
    """The report files; with `cost` (a `harness cost --gallery` record), a section on the measured online
    cost at scale."""
    output.mkdir(parents=True, exist_ok=True)
    scale = scale_rows(cost)
    context = {"boards": boards, "runs": provenance(runs), "significance": 0.05, "scale": scale}
    curves = training_curves(runs)
    written = []
    if "html" in formats:
        atomic_write(output / "report.html", html_report(boards, context, curves, cost))
        written.append(output / "report.html")
    if "tex" in formats:
        plots = {b.key: pdf(frontier_figure(b), output / f"frontier-{b.key}.pdf").name
                 for b in boards if b.plot_points()}
        scale_plot = pdf(scale_figure(cost), output / "scale.pdf").name if scale else ""
        curve_plots = [{"label": c.label, "file": pdf(curve_figure(c), output / f"curves-{i}-{c.key}.pdf").name}
                       for i, c in enumerate(curves, 1)]
        text = _environment(False).get_template("report.tex.j2").render(**context, plots=plots, scale_plot=scale_plot,
                                                                        curves=curve_plots)
        atomic_write(output / "report.tex", text)
        written += [output / "report.tex",
                    *(output / name for name in [*plots.values(), scale_plot, *(c["file"] for c in curve_plots)] if name)]
    if "md" in formats:
        text = _environment(False).get_template("report.md.j2").render(**context)
        atomic_write(output / "report.md", text)
        written.append(output / "report.md")
    return written
