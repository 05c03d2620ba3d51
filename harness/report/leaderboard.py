"""Saved runs -> leaderboards: one per benchmark x split x direction, built from results.json and the
per-query ranks alone (nothing is recomputed).

A leaderboard holds the harness's own rows (ranked: best bold, second underlined, per column in its own
direction of better), post-processed rows (labelled, never ranked), the published numbers beside the
matching rows ("reported"), cost columns, bootstrap intervals and a paired test against a reference
method, and the points of the accuracy-cost plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from harness.cost.model import MethodCost
from harness.errors import HarnessError
from harness.report.reported import METRICS, POST_NAMES, counterpart, read_reported
from harness.report.stats import Interval, PairedTest, bootstrap_intervals, paired_permutation_test
from harness.pipeline.results import read_results

SIGNIFICANCE = 0.05


@dataclass
class Run:
    folder: Path
    results: dict

    @property
    def name(self) -> str:
        return self.folder.name

    def ranks(self, row: dict) -> pd.DataFrame:
        path = self.folder / row["ranks_file"]
        if not path.is_file():
            raise HarnessError(f"{self.folder / 'results.json'}: per-query ranks {path} are missing; the report needs "
                               "them for intervals and paired tests.")
        return pd.read_csv(path, keep_default_na=False)


def load_run(path: str | Path) -> Run:
    """A run directory, or its results.json."""
    path = Path(path)
    if path.is_dir():
        file = path / "results.json"
        if not file.is_file():
            raise HarnessError(f"{path}: no results.json in this directory; give a run directory written by "
                               "`harness run` (or its results.json).")
    elif path.is_file():
        file = path
    else:
        raise HarnessError(f"{path}: no such file or directory; give a run directory written by `harness run` "
                           "(or its results.json).")
    return Run(file.parent, read_results(file))


UNRANKED = ("post", "approximate")  # labelled, listed apart, never ranked against the harness's own rows


@dataclass
class Column:
    key: str
    header: str  # HTML and Markdown
    tex: str  # LaTeX, a shorter text where HTML's is too wide (plain text: escaped when rendered)
    better: str | None = None  # "higher", "lower" or None (not ranked)


METRIC_COLUMNS = [Column("R1", "R@1", "R@1", "higher"), Column("R5", "R@5", "R@5", "higher"),
                  Column("R10", "R@10", "R@10", "higher"), Column("MdR", "MdR", "MdR", "lower"),
                  Column("MnR", "MnR", "MnR", "lower")]


@dataclass
class Cell:
    text: str
    mark: str | None = None  # "best" or "second"
    flag: bool = False  # a significant paired difference


@dataclass
class Entry:
    label: str
    kind: str  # "own", "reported", "post" or "approximate" (searched by an approximate index)
    values: dict[str, float | None]
    note: str = ""
    intervals: dict[str, Interval] | None = None
    paired: PairedTest | None = None
    cells: dict[str, Cell] = field(default_factory=dict)
    ranks: pd.DataFrame | None = None
    method: str = ""
    run: Run | None = None  # the run the row comes from (its frame cache shows the retrieved videos)


@dataclass
class Leaderboard:
    benchmark: str
    split: str
    direction: str
    shape: str
    gallery: int
    queries: int
    columns: list[Column]
    entries: list[Entry]
    reference: str | None
    comparison: dict | None = None

    @property
    def title(self) -> str:
        return f"{self.benchmark} {self.split} {self.direction}"

    @property
    def key(self) -> str:
        return f"{self.benchmark}-{self.split}-{self.direction}"

    def plot_points(self) -> list[tuple[str, float, float]]:
        return [(e.label, e.values["online_gmac"], e.values["R1"]) for e in self.entries
                if e.kind == "own" and e.values.get("online_gmac") and e.values.get("R1") is not None]


def online_cost(record: dict, gallery: int, stage: str, direction: str) -> tuple[float, float, float | None]:
    """(MACs of one query against the gallery, MACs per pair, measured seconds of the same) for a stage.
    The coarse stage of a two-stage method is costed as a one-stage method scoring with its coarse score."""
    cost = MethodCost.from_dict(record)
    if stage == "coarse":
        cost = replace(cost, score=cost.coarse, coarse=None, candidates=None)
    macs = cost.online(gallery, "text" if direction == "t2v" else "video")
    timing, seconds = record.get("timing"), None
    if timing:
        median = {name: t["median_s"] for name, t in timing.items()}
        seconds = median["per_query" if direction == "t2v" else "per_video"]
        if cost.coarse is None:
            seconds += gallery * median["per_pair_coarse" if stage == "coarse" else "per_pair"]
        else:
            seconds += gallery * median["per_pair_coarse"] + min(cost.candidates, gallery) * median["per_pair"]
    return macs, cost.score.per_pair, seconds


def label_of(row: dict) -> str:
    stage = row.get("stage", "single")
    return row["method"] if stage in ("single", "two-stage") else f"{row['method']} ({stage})"


def build_leaderboards(runs: list[Run], reference: str | None = "clip4clip-meanp", compare: tuple[str, str] | None = None,
                       reported: pd.DataFrame | None = None, resamples: int = 1000) -> list[Leaderboard]:
    reported = read_reported() if reported is None else reported
    grouped: dict[tuple, list[tuple[Run, dict]]] = {}
    for run in runs:
        for row in run.results["rows"]:
            grouped.setdefault((row["benchmark"], row["split"], row["direction"]), []).append((run, row))
    boards = []
    for (benchmark, split, direction), rows in grouped.items():
        entries = []
        seen_reported: set = set()
        labels = [label_of(row) + row.get("post", "none") + str(row.get("index")) for _, row in rows]
        for run, row in rows:
            # the same method in two runs
            duplicate = labels.count(label_of(row) + row.get("post", "none") + str(row.get("index"))) > 1
            entry = own_entry(run, row, direction, duplicate, resamples)
            entries.append(entry)
            published = published_entry(run, row, reported, seen_reported)
            if published is not None:
                entry.values["delta_reported"] = entry.values["R1"] - published.values["R1"] \
                    if published.values["R1"] is not None else None
                entries.append(published)
        own = [e for e in entries if e.kind == "own"]
        ref = next((e for e in own if e.method == reference), None)
        for entry in own:
            entry.values["time_ratio"] = (entry.values["online_s"] / ref.values["online_s"]
                                          if ref is not None and entry.values.get("online_s") and
                                          ref.values.get("online_s") else None)
            if ref is not None and entry is not ref:
                entry.paired = paired_against(entry, ref)
        # each reported row right under its own row; post-processed and approximate rows last, apart
        ordered = [e for e in entries if e.kind not in UNRANKED] + [e for e in entries if e.kind in UNRANKED]
        first = rows[0][1]
        board = Leaderboard(benchmark, split, direction, first.get("shape", ""), int(first["gallery"]),
                            int(first["queries"]), columns_for(ordered, ref), ordered,
                            reference if ref is not None else None)
        fill_cells(board)
        board.comparison = per_query_view(board, compare)
        boards.append(board)
    return boards


def own_entry(run: Run, row: dict, direction: str, duplicate: bool, resamples: int) -> Entry:
    post = row.get("post", "none")
    label = label_of(row) + (f" + {POST_NAMES.get(post, post)}" if post != "none" else "")
    if row.get("approximate"):
        label += f" [approximate: {row['index']} index, recall@10 {row['index_recall']:.3f}]"
    if duplicate:
        label += f" [{run.name}]"
    if "limit" in row:
        label += f" [limited: first {row['limit']} videos]"
    values: dict[str, float | None] = {m: float(row[m]) for m in METRICS}
    record = run.results.get("methods", {}).get(row["method"], {}).get("cost")
    if record:
        macs, pair, seconds = online_cost(record, int(row["gallery"]), row.get("stage", "single"), direction)
        values.update(online_gmac=macs / 1e9, pair_mmac=pair / 1e6, online_s=seconds)
    ranks = run.ranks(row)
    multi_t2v = row.get("shape") == "multi-caption" and direction == "t2v" and "video" in ranks
    groups = ranks["video"].to_numpy() if multi_t2v else None
    intervals = bootstrap_intervals(ranks["rank"].to_numpy(), groups, resamples=resamples)
    kind = "approximate" if row.get("approximate") else "own" if post == "none" else "post"
    return Entry(label, kind, values, intervals=intervals, ranks=ranks, method=row["method"], run=run)


def published_entry(run: Run, row: dict, reported: pd.DataFrame, seen: set) -> Entry | None:
    if row.get("stage", "single") not in ("single", "two-stage") or row.get("approximate") or "limit" in row:
        return None  # a first stage alone, an approximate search or a smoke test is not what a paper reports
    method = run.results.get("methods", {}).get(row["method"], {})
    suite = run.results.get("suite", {})
    match = counterpart(reported, method.get("reported_as"), row, suite.get("backbone", {}).get("arch", ""),
                        suite.get("benchmark", {}).get("train_split"))
    if match is None or (match["method"], match["post"]) in seen:
        return None
    seen.add((match["method"], match["post"]))
    post = f", {POST_NAMES.get(match['post'], match['post'])}" if match["post"] != "none" else ""
    values = {m: (None if pd.isna(match[m]) else float(match[m])) for m in METRICS}
    return Entry(f"{match['method']} (reported{post})", "reported", values,
                 note=f"{match['venue']}; {match['source']}" if isinstance(match.get("venue"), str) else
                 str(match["source"]), method=match["method"])


def paired_against(entry: Entry, reference: Entry) -> PairedTest | None:
    a, b = entry.ranks, reference.ranks
    if len(a) != len(b) or list(a["query_text"]) != list(b["query_text"]):
        return None  # not the same queries (e.g. a partial gallery in one run)
    return paired_permutation_test(a["rank"].to_numpy(), b["rank"].to_numpy(), "R1")


def columns_for(entries: list[Entry], reference: Entry | None) -> list[Column]:
    present = {k for e in entries for k, v in e.values.items() if v is not None}
    columns = list(METRIC_COLUMNS)
    optional = [Column("delta_reported", "ΔR@1 vs reported", "ΔR@1 vs rep."),
                Column("online_gmac", "GMAC / query (online)", "GMAC/query", "lower"),
                Column("pair_mmac", "MMAC / pair", "MMAC/pair", "lower"),
                Column("time_ratio", "time × ref", "time × ref", "lower")]
    columns += [c for c in optional if c.key in present]
    if reference is not None and any(e.paired is not None for e in entries):
        columns.append(Column("paired", f"ΔR@1 vs {reference.method} (p)",
                              f"ΔR@1 vs {reference.method} (p)"))
    return columns


FORMATS = {"R1": "{:.1f}", "R5": "{:.1f}", "R10": "{:.1f}", "MdR": "{:.1f}", "MnR": "{:.1f}",
           "delta_reported": "{:+.1f}", "online_gmac": "{:.3g}", "pair_mmac": "{:.3g}", "time_ratio": "{:.2f}"}


def fill_cells(board: Leaderboard) -> None:
    """Formatted cells, with best/second marks among the harness's own (not post-processed) rows."""
    ranked = [e for e in board.entries if e.kind == "own"]
    marks: dict[tuple[int, str], str] = {}
    for column in board.columns:
        if column.better is None:
            continue
        values = sorted({e.values[column.key] for e in ranked if e.values.get(column.key) is not None},
                        reverse=column.better == "higher")
        for entry in ranked:
            value = entry.values.get(column.key)
            if value is not None and values and value == values[0]:
                marks[id(entry), column.key] = "best"
            elif value is not None and len(values) > 1 and value == values[1]:
                marks[id(entry), column.key] = "second"
    for entry in board.entries:
        for column in board.columns:
            if column.key == "paired":
                entry.cells["paired"] = paired_cell(entry.paired)
                continue
            value = entry.values.get(column.key)
            text = "" if value is None else FORMATS[column.key].format(value)
            entry.cells[column.key] = Cell(text, marks.get((id(entry), column.key)))


def paired_cell(test: PairedTest | None) -> Cell:
    if test is None:
        return Cell("")
    p_value = "<0.001" if test.p_value < 0.001 else f"{test.p_value:.3f}"
    return Cell(f"{test.difference:+.1f} ({p_value})", flag=test.p_value < SIGNIFICANCE)


@dataclass
class Answer:
    """One method's answer to one query: the ground truth's rank and the top of the ranking (video id,
    score), best first, as the ranks file holds it (empty where it holds no top lists)."""

    label: str
    rank: int
    top: list[tuple[str, float]]


@dataclass
class Example:
    """A query shown with the videos each method retrieved for it."""

    query: str
    truth: str  # the ground-truth video id
    why: str  # what sets it apart: which method alone ranks it first, or that both miss it
    answers: list[Answer]


# the examples shown per comparison: queries only the first method ranks first, only the second, neither
EXAMPLES = {"only_a": 3, "only_b": 3, "neither": 2}


def top_lists(ranks: pd.DataFrame) -> list[list[tuple[str, float]]] | None:
    """Per query, (video id, score) of the highest-scored videos, from the ranks file's `top` and
    `top_scores` columns; None for a ranks file written without them."""
    if "top" not in ranks or "top_scores" not in ranks:
        return None
    return [list(zip(str(ids).split(), (float(v) for v in str(scores).split())))
            for ids, scores in zip(ranks["top"], ranks["top_scores"])]


def examples(a: Entry, b: Entry, masks: dict[str, np.ndarray]) -> list[Example]:
    """The first queries of each kind (EXAMPLES), in query order, with both methods' answers."""
    tops_a, tops_b = top_lists(a.ranks), top_lists(b.ranks)
    why = {"only_a": f"only {a.label} ranks it first", "only_b": f"only {b.label} ranks it first",
           "neither": "neither ranks it first"}
    chosen = []
    for kind, count in EXAMPLES.items():
        for i in np.flatnonzero(masks[kind])[:count]:
            answers = [Answer(entry.label, int(entry.ranks["rank"].iat[i]), tops[i] if tops is not None else [])
                       for entry, tops in ((a, tops_a), (b, tops_b))]
            chosen.append(Example(str(a.ranks["query_text"].iat[i]), str(a.ranks["video"].iat[i]), why[kind],
                                  answers))
    return chosen


def per_query_view(board: Leaderboard, compare: tuple[str, str] | None, limit: int = 25) -> dict | None:
    """Queries one method ranks first and the other does not, with their captions (t2v only), and a few
    examples (those, and queries both miss) with what each method retrieved for them."""
    own = [e for e in board.entries if e.kind == "own" and e.ranks is not None]
    if board.direction != "t2v" or len(own) < 2:
        return None
    if compare is None:  # the reference against the best R@1 that is not the reference
        best = max((e for e in own if e.method != board.reference), key=lambda e: e.values["R1"])
        compare = (best.method, board.reference or next(e.method for e in own if e is not best))
    a = next((e for e in own if e.method == compare[0]), None)
    b = next((e for e in own if e.method == compare[1]), None)
    if a is None or b is None or len(a.ranks) != len(b.ranks) or a is b:
        return None
    ranks_a, ranks_b = a.ranks["rank"].to_numpy(), b.ranks["rank"].to_numpy()
    texts = a.ranks["query_text"].astype(str).to_numpy()

    def listing(mask: np.ndarray) -> list[dict]:
        return [{"query": str(texts[i]), "rank_a": int(ranks_a[i]), "rank_b": int(ranks_b[i])}
                for i in np.flatnonzero(mask)[:limit]]

    only_a, only_b = (ranks_a == 1) & (ranks_b > 1), (ranks_b == 1) & (ranks_a > 1)
    neither = (ranks_a > 1) & (ranks_b > 1)
    return {"a": a.label, "b": b.label, "only_a": listing(only_a), "only_b": listing(only_b),
            "count_a": int(only_a.sum()), "count_b": int(only_b.sum()), "limit": limit,
            "examples": examples(a, b, {"only_a": only_a, "only_b": only_b, "neither": neither}),
            "has_top": "top" in a.ranks and "top" in b.ranks, "run": a.run}
