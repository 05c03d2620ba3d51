"""Leaderboards -> HTML (one self-contained file), LaTeX (booktabs; the plots as PDF beside it) and
Markdown, through the jinja2 templates in templates/. Every name and caption is escaped for its format."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from harness.report.leaderboard import Cell, Leaderboard, Run
from harness.report.plot import frontier_pdf, frontier_svg
from harness.files import atomic_write

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


def write_report(boards: list[Leaderboard], runs: list[Run], formats: list[str], output: Path) -> list[Path]:
    output.mkdir(parents=True, exist_ok=True)
    context = {"boards": boards, "runs": provenance(runs), "significance": 0.05}
    written = []
    if "html" in formats:
        plots = {b.key: Markup(frontier_svg(b)) for b in boards if b.plot_points()}
        text = _environment(True).get_template("report.html.j2").render(**context, plots=plots)
        atomic_write(output / "report.html", text)
        written.append(output / "report.html")
    if "tex" in formats:
        plots = {b.key: frontier_pdf(b, output / f"frontier-{b.key}.pdf").name for b in boards if b.plot_points()}
        text = _environment(False).get_template("report.tex.j2").render(**context, plots=plots)
        atomic_write(output / "report.tex", text)
        written += [output / "report.tex", *(output / name for name in plots.values())]
    if "md" in formats:
        text = _environment(False).get_template("report.md.j2").render(**context)
        atomic_write(output / "report.md", text)
        written.append(output / "report.md")
    return written
