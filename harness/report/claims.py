"""The published cost claims (claims.csv: "nearly 220x faster", Table I's head-FLOPs ratios, "nearly 50x
faster") against what the harness counts and measures for the same stage, by one protocol.

Counting rule (docs/cost.md section 7): the score stage of the 1k-A matrix, 1,000 captions x 1,000 videos,
in fvcore MACs (`MethodCost.similarity_matrix()`, what `harness cost` prints as "1k-A matrix GMAC"), and
the same plus the head's once-per-query work: what a method's `encode_text` spends beyond the bare CLIP text
tower (the `encode_text` of zeroshot, the text tower and a normalisation), once per caption, 1,000 times.
Measured: the score of one query against 1,000 videos (1,000 x the per-pair median of `harness cost`'s
timing; a two-stage method: 1,000 coarse pairs and k fine ones), the same with the query's `encode_text`
(the per-query median) added, and, where a `harness cost --gallery` record has them, one query against
10^4..10^6 stored videos. A claim holds when the harness's ratio is within `factor` (default 2) of the
published one, either way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from io import StringIO
from pathlib import Path

import jinja2
import pandas as pd

from harness.cost.model import MATRIX_1KA, MethodCost
from harness.errors import HarnessError
from harness.report.render import latex_escape, markdown_escape

DEFAULT_FACTOR = 2.0
# Methods whose encode_text is the CLIP text tower and a normalisation, nothing of a head: the text tower's cost.
BARE_TEXT_TOWER = ("zeroshot", "clip4clip-meanp")
CLAIM_COLUMNS = ("id", "source", "statement", "quantity", "numerator", "denominator", "reported_numerator",
                 "reported_denominator", "reported_ratio", "note")
HOLDS, FAILS, UNCHECKABLE = "holds", "does not hold", "cannot be checked"
_UNNAMED = re.compile(r"\b(not named|unnamed)\b", re.IGNORECASE)
_NAMES_ACCURACY = re.compile(r"performance|accuracy|R@\d", re.IGNORECASE)
_RELATIVE_SLACK = 1e-9  # a ratio printed at the boundary of the factor holds despite float rounding


@dataclass(frozen=True)
class Claim:
    """One row of claims.csv: what is compared with what, on which quantity, the published figures."""

    id: str
    source: str
    statement: str
    quantity: str
    numerator: str  # the paper's name of the costlier side
    denominator: str
    reported_numerator: float | None
    reported_denominator: float | None
    reported_ratio: float
    note: str

    @property
    def names_accuracy(self) -> bool:
        return bool(_NAMES_ACCURACY.search(self.statement))


def read_claims(path: str | Path | None = None) -> list[Claim]:
    """claims.csv (the packaged copy unless a path is given) as Claims; a malformed file is one error naming it."""
    where = str(path) if path is not None else "harness/report/claims.csv"
    if path is None:
        text = resources.files("harness.report").joinpath("claims.csv").read_text()
    else:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as error:
            raise HarnessError(f"{where}: cannot be read as a claims table ({error}).") from None
    table = pd.read_csv(StringIO(text), dtype=str, keep_default_na=False)
    missing = [c for c in CLAIM_COLUMNS if c not in table.columns]
    if missing:
        raise HarnessError(f"{where}: not a claims table (no column {', '.join(missing)}).")
    return [_claim(row, where, line) for line, row in enumerate(table.to_dict("records"), start=2)]


def _claim(row: dict, where: str, line: int) -> Claim:
    def number(column: str, required: bool = False) -> float | None:
        text = row[column].strip()
        if not text and not required:
            return None
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not value > 0:
            raise HarnessError(f"{where} line {line} ({row['id']}): {column} {text!r} is not a positive number.")
        return value

    return Claim(row["id"], row["source"], row["statement"], row["quantity"], row["numerator"], row["denominator"],
                 number("reported_numerator"), number("reported_denominator"), number("reported_ratio", True),
                 row["note"])


@dataclass
class MethodFigures:
    """What the harness has for one method, from a cost record."""

    name: str  # the harness's name
    reported_as: str | None  # the papers' name
    matrix_macs: float  # the score stage of the 1k-A matrix
    query_head_macs: float | None  # the head's once-per-query work, per caption (None: no bare text tower known)
    score_s: float | None = None  # measured: the score of one query against 1,000 videos
    query_s: float | None = None  # measured: encode_text of one caption
    at_scale_s: dict[int, float] = field(default_factory=dict)  # gallery size -> one query's score (measured)

    @property
    def matrix_with_query_macs(self) -> float | None:
        return None if self.query_head_macs is None else self.matrix_macs + MATRIX_1KA * self.query_head_macs

    @property
    def encoded_query_s(self) -> float | None:
        """One query encoded and scored against 1,000 videos."""
        return None if self.score_s is None or self.query_s is None else self.query_s + self.score_s


def squash(name: str) -> str:
    """'Prompt Switch' and 'promptswitch', 'X-CLIP' and 'xclip' compare equal."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def paper_name(method: str, reported_as: str | None, paper_names: Iterable[str]) -> str | None:
    """The method's name in the papers: its `reported_as`, else a published name equal to its own once case and
    punctuation are set aside (EERCF, which reports as nothing, is "EERCF" in the claims)."""
    if reported_as:
        return reported_as
    return next((name for name in paper_names if squash(name) == squash(method)), None)


def score_seconds(cost: MethodCost, timing: dict | None, gallery: int = MATRIX_1KA) -> float | None:
    """Measured seconds of the score stage of one query against `gallery` videos, from the per-pair medians."""
    if not timing:
        return None
    median = {stage: t["median_s"] for stage, t in timing.items()}
    if cost.coarse is None:
        return gallery * median["per_pair"]
    return gallery * median["per_pair_coarse"] + min(cost.candidates, gallery) * median["per_pair"]


def method_figures(name: str, entry: dict, reported_as: str | None, bare_text_tower: float | None,
                   scale_points: list[dict]) -> MethodFigures:
    """One method's figures from its `harness cost` entry (and the points of a `--gallery` measurement)."""
    cost, timing = MethodCost.from_dict(entry), entry.get("timing")
    head = max(0.0, float(entry["per_query"]) - bare_text_tower) if bare_text_tower is not None else None
    at_scale = {int(p["gallery"]): float(p["one_query_s"]) for p in scale_points if p["status"] == "measured"}
    return MethodFigures(name, reported_as, cost.similarity_matrix(), head, score_seconds(cost, timing),
                         timing["per_query"]["median_s"] if timing else None, at_scale)


def figures_from_record(record: dict, reported_as: dict[str, str | None], paper_names: Iterable[str] = (),
                        scale: dict | None = None) -> dict[str, MethodFigures]:
    """{harness name: its figures} from a `harness cost --output` record (read_cost_record); `scale`: a `harness
    cost --gallery` record of the same protocol whose measurements are used where `record` has none."""
    methods, paper_names = record["methods"], list(paper_names)
    bare = next((methods[name]["per_query"] for name in BARE_TEXT_TOWER if name in methods), None)
    scaled = (scale or {}).get("methods", {})
    return {name: method_figures(name, entry, paper_name(name, reported_as.get(name), paper_names), bare,
                                 entry.get("scale") or scaled.get(name, {}).get("scale", []))
            for name, entry in methods.items()}


def read_cost_record(path: str | Path, option: str = "--cost") -> dict:
    """A `harness cost --output` file, checked for what the claims and Table I read; one error otherwise."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise HarnessError(f"{option} {path}: cannot be read as a `harness cost --output` record ({error}).") from None
    if not isinstance(record, dict) or not isinstance(record.get("methods"), dict) or not record["methods"]:
        raise HarnessError(f"{option} {path}: not a `harness cost --output` record (no methods); write one with "
                           "`harness cost SUITE --output FILE`.")
    if not isinstance(record.get("protocol"), dict):
        raise HarnessError(f"{option} {path}: not a `harness cost --output` record (no protocol).")
    for name, entry in record["methods"].items():
        try:
            method_figures(name, entry, None, 0.0, entry.get("scale", []))
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise HarnessError(f"{option} {path}: method {name!r} is not a `harness cost` entry (missing or bad "
                               f"{error}).") from None
    return record


def check_same_protocol(record: dict, scale: dict, option: str = "--scale") -> None:
    """Measurements at scale are only comparable with counts of the same shapes."""
    keys = ("frames", "words", "image_size", "arch")
    differ = [f"{k} {scale['protocol'].get(k)} != {record['protocol'].get(k)}" for k in keys
              if scale["protocol"].get(k) != record["protocol"].get(k)]
    if differ:
        raise HarnessError(f"{option}: measured under another protocol than the cost record ({'; '.join(differ)}).")


@dataclass(frozen=True)
class Ratio:
    """A harness figure of the costlier side over the cheaper one; None where either is missing."""

    numerator: float | None
    denominator: float | None

    @property
    def value(self) -> float | None:
        if self.numerator is None or not self.denominator:
            return None
        return self.numerator / self.denominator


@dataclass(frozen=True)
class Verdict:
    kind: str  # HOLDS, FAILS or UNCHECKABLE
    text: str


def verdict(reported: float, found: float | None, factor: float, what: str, missing: str = "") -> Verdict:
    """Whether `found` (a harness ratio) is within `factor` of the `reported` ratio, in words."""
    if found is None:
        return Verdict(UNCHECKABLE, f"{UNCHECKABLE}: {missing or f'no {what} ratio'}")
    off = found / reported
    if 1 / factor <= off * (1 + _RELATIVE_SLACK) and off <= factor * (1 + _RELATIVE_SLACK):
        return Verdict(HOLDS, f"{HOLDS}: {what} {number(found)}x, within {factor:g}x of the reported "
                              f"{number(reported)}x")
    how = f"{number(off)} times above" if off > 1 else f"{number(1 / off)} times below"
    return Verdict(FAILS, f"{FAILS}: {what} {number(found)}x, {how} the reported {number(reported)}x")


def number(value: float) -> str:
    return f"{value:.4g}"


@dataclass
class Comparison:
    """The harness's ratios of one method's figures over another's: counted, measured, at scale."""

    numerator: MethodFigures
    denominator: MethodFigures
    counted: Ratio
    counted_with_query: Ratio
    measured: Ratio
    measured_with_query: Ratio
    at_scale: dict[int, Ratio]


def compare(numerator: MethodFigures, denominator: MethodFigures) -> Comparison:
    sizes = sorted(set(numerator.at_scale_s) & set(denominator.at_scale_s))
    return Comparison(numerator, denominator, Ratio(numerator.matrix_macs, denominator.matrix_macs),
                      Ratio(numerator.matrix_with_query_macs, denominator.matrix_with_query_macs),
                      Ratio(numerator.score_s, denominator.score_s),
                      Ratio(numerator.encoded_query_s, denominator.encoded_query_s),
                      {n: Ratio(numerator.at_scale_s[n], denominator.at_scale_s[n]) for n in sizes})


@dataclass
class ClaimCheck:
    claim: Claim
    comparison: Comparison | None  # None: cannot be checked
    verdict: Verdict  # on the counted ratio
    measured_verdict: Verdict  # on the measured ratio at 1,000 videos
    # an unnamed reference: every method the harness has in its place, against the named side
    against_every: list[Comparison] = field(default_factory=list)
    accuracy: dict[str, float] = field(default_factory=dict)  # harness name -> a run's R@1, if the claim names accuracy


def find_method(name: str, figures: dict[str, MethodFigures]) -> MethodFigures | None:
    return next((f for f in figures.values() if f.reported_as == name), None)


def check_claim(claim: Claim, figures: dict[str, MethodFigures], factor: float = DEFAULT_FACTOR,
                accuracy: dict[str, float] | None = None) -> ClaimCheck:
    numerator, denominator = find_method(claim.numerator, figures), find_method(claim.denominator, figures)
    accuracy = accuracy if claim.names_accuracy and accuracy else {}
    missing = [name for name, found in ((claim.numerator, numerator), (claim.denominator, denominator))
               if found is None and not _UNNAMED.search(name)]
    unnamed = [name for name in (claim.numerator, claim.denominator) if _UNNAMED.search(name)]
    same_reason = verdict(claim.reported_ratio, None, factor, "", "as the verdict says")
    if missing:
        have = ", ".join(sorted(f.name for f in figures.values()))
        reason = (f"no method of the cost record is reported as {' or '.join(map(repr, missing))} (the record "
                  f"has {have})")
        return ClaimCheck(claim, None, verdict(claim.reported_ratio, None, factor, "", reason), same_reason,
                          accuracy=accuracy)
    if unnamed:
        named = numerator or denominator
        others = [compare(f, named) if denominator is named else compare(named, f)
                  for f in figures.values() if named is not None and f is not named]
        others.sort(key=lambda c: -(c.counted.value or 0.0))
        reason = f"the reference ({unnamed[0]}) is not named; " + within_summary(claim, others, factor)
        return ClaimCheck(claim, None, verdict(claim.reported_ratio, None, factor, "", reason), same_reason, others,
                          accuracy)
    comparison = compare(numerator, denominator)
    no_timing = "the cost record has no timing (it was written by harness cost --no-timing)"
    return ClaimCheck(claim, comparison, verdict(claim.reported_ratio, comparison.counted.value, factor, "counted"),
                      verdict(claim.reported_ratio, comparison.measured.value, factor, "measured", no_timing),
                      accuracy=accuracy)


def within_summary(claim: Claim, comparisons: list[Comparison], factor: float) -> str:
    """Against which methods the harness's ratio would be within the factor of the published one."""
    def within(ratio: Ratio) -> bool:
        return ratio.value is not None and verdict(claim.reported_ratio, ratio.value, factor, "").kind == HOLDS

    def names(pick) -> str:
        found = [label(c) for c in comparisons if within(pick(c))]
        return ", ".join(found) if found else "none"

    def label(c: Comparison) -> str:
        other = c.numerator if _UNNAMED.search(claim.numerator) else c.denominator
        return other.name

    return (f"against every method the harness has, the ratio is within {factor:g}x of {number(claim.reported_ratio)}x "
            f"counted for: {names(lambda c: c.counted)}; counted with the per-query work for: "
            f"{names(lambda c: c.counted_with_query)}; measured for: {names(lambda c: c.measured)}")


def check_factor(factor: float) -> float:
    if not factor > 1:
        raise HarnessError(f"--factor {factor:g}: a claim holds within a factor above 1 (e.g. 2).")
    return factor


def check_claims(claims: list[Claim], figures: dict[str, MethodFigures], factor: float = DEFAULT_FACTOR,
                 accuracy: dict[str, float] | None = None) -> list[ClaimCheck]:
    check_factor(factor)
    return [check_claim(claim, figures, factor, accuracy) for claim in claims]


def run_accuracy(results: dict) -> tuple[dict[str, float], str]:
    """{harness name: t2v R@1} of a run's first benchmark and split (its own rows: no post-processing, no
    first stage alone, no approximate search, no smoke test), and what they are."""
    rows = [row for row in results.get("rows", []) if row["direction"] == "t2v" and row.get("post", "none") == "none"
            and row.get("stage", "single") in ("single", "two-stage") and not row.get("approximate")
            and "limit" not in row]
    if not rows:
        return {}, ""
    where = (rows[0]["benchmark"], rows[0]["split"])
    accuracy = {row["method"]: float(row["R1"]) for row in rows if (row["benchmark"], row["split"]) == where}
    return accuracy, f"t2v R@1 on {where[0]} {where[1]}"




def templates() -> jinja2.Environment:
    """The report templates with render.py's escaping filters (the claims and Table I share them)."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("harness.report", "templates"), autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(tex=latex_escape, md=markdown_escape)
    return env


def gmac(macs: float | None) -> str:
    return "" if macs is None else f"{macs / 1e9:.4g}"


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1e3:.3g} ms" if value < 1 else f"{value:.3g} s"


def ratio_cell(ratio: Ratio, unit=gmac, suffix: str = " GMAC") -> str:
    """'238.9 / 16.89 GMAC = 14.14x': the figures the ratio is computed from, and the ratio."""
    if ratio.value is None:
        return ""
    return f"{unit(ratio.numerator)}{suffix} / {unit(ratio.denominator)}{suffix} = {number(ratio.value)}x"


def scale_cell(at_scale: dict[int, Ratio]) -> str:
    return "; ".join(f"10^{len(str(n)) - 1}: {seconds(r.numerator)} / {seconds(r.denominator)} = {number(r.value)}x"
                     if n in (10**4, 10**5, 10**6) else f"{n:,}: {number(r.value)}x" for n, r in at_scale.items())


def reported_cell(claim: Claim) -> str:
    if claim.reported_numerator is None or claim.reported_denominator is None:
        return f"{number(claim.reported_ratio)}x"
    return (f"{number(claim.reported_numerator)} G / {number(claim.reported_denominator)} G = "
            f"{number(claim.reported_ratio)}x")


def comparison_cells(c: Comparison) -> dict:
    return {"counted": ratio_cell(c.counted), "with_query": ratio_cell(c.counted_with_query),
            "measured": ratio_cell(c.measured, seconds, ""),
            "measured_query": ratio_cell(c.measured_with_query, seconds, ""),
            "scale": scale_cell(c.at_scale)}


def claims_context(checks: list[ClaimCheck], figures: dict[str, MethodFigures], record: dict, factor: float,
                   accuracy_label: str = "", reported_r1: dict[str, float] | None = None,
                   head_flops: dict[str, float] | None = None, scale: dict | None = None) -> dict:
    """What claims.md.j2 shows: every figure as text, each ratio beside the two figures it divides."""
    rows, references = [], []
    for check in checks:
        c = check.comparison
        compared = f"{c.numerator.name} / {c.denominator.name}" if c else ""
        rows.append({"id": check.claim.id, "statement": check.claim.statement, "source": check.claim.source,
                     "note": check.claim.note,
                     "compared": compared, "reported": reported_cell(check.claim),
                     **(comparison_cells(c) if c else dict.fromkeys(("counted", "with_query", "measured",
                                                                     "measured_query", "scale"), "")),
                     "verdict": check.verdict.text, "measured_verdict": check.measured_verdict.text})
        if check.against_every:
            references.append({"id": check.claim.id, "statement": check.claim.statement,
                               "reported": number(check.claim.reported_ratio), "accuracy": bool(check.accuracy),
                               "rows": [{"numerator": e.numerator.name, "denominator": e.denominator.name,
                                         **comparison_cells(e),
                                         "run_r1": accuracy_text(check.accuracy, e),
                                         "reported_r1": accuracy_text(reported_r1 or {}, e, paper=True)}
                                        for e in check.against_every]})
    printed = head_flops or {}
    methods = [{"name": f.name, "reported_as": f.reported_as or "", "matrix": gmac(f.matrix_macs),
                "query_head": f"{f.query_head_macs / 1e6:.4g}" if f.query_head_macs is not None else "",
                "with_query": gmac(f.matrix_with_query_macs),
                "reported": f"{printed[f.reported_as]:g}" if f.reported_as in printed else "",
                "counted_over_reported": number(f.matrix_macs / 1e9 / printed[f.reported_as])
                if f.reported_as in printed else "",
                "score": seconds(f.score_s), "query": seconds(f.query_s),
                "scale": "; ".join(f"{n:,}: {seconds(s)}" for n, s in sorted(f.at_scale_s.items()))}
               for f in figures.values()]
    return {"rows": rows, "references": references, "methods": methods, "factor": f"{factor:g}",
            "matrix": f"{MATRIX_1KA:,}", "bare": ", ".join(BARE_TEXT_TOWER), "provenance": provenance(record),
            "accuracy_label": accuracy_label, "scale_provenance": provenance(scale) if scale else ""}


def accuracy_text(accuracy: dict[str, float], comparison: Comparison, paper: bool = False) -> str:
    """R@1 of both sides, 'a / b' (the papers' names key `reported`; the harness's names the run's)."""
    def one(f: MethodFigures) -> str:
        value = accuracy.get(f.reported_as if paper else f.name)
        return "" if value is None else f"{value:.1f}"

    sides = one(comparison.numerator), one(comparison.denominator)
    return "" if not any(sides) else f"{sides[0] or '-'} / {sides[1] or '-'}"


def provenance(record: dict) -> str:
    """Where a cost record's figures come from, in words (no file path)."""
    protocol, settings, env = record["protocol"], record.get("settings", {}), record.get("environment", {})
    timed = "timed" if settings.get("timing") else "not timed"
    if settings.get("scale_galleries"):
        timed += ", galleries of " + ", ".join(f"{n:,}" for n in settings["scale_galleries"]) + " videos measured"
    packages = env.get("packages", {})
    return (f"harness cost at {protocol.get('arch')}, {protocol.get('frames')} frames, {protocol.get('words')} "
            f"words, {protocol.get('image_size')} px, weights {protocol.get('weights', 'random')}; {timed} on "
            f"{env.get('device_name', env.get('device', '?'))} ({env.get('torch_threads', '?')} threads, torch "
            f"{packages.get('torch', '?')}); code {settings.get('code_version', '?')}")


def render_claims(context: dict) -> str:
    return templates().get_template("claims.md.j2").render(**context)
