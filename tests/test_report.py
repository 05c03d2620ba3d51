"""Reports from saved results: leaderboards, escaping, published rows, intervals, the paired test, and
the rendered HTML (headless Chromium) and LaTeX (pdflatex)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from harness.commands.cli import main
from harness.report.leaderboard import build_leaderboards, load_run
from harness.report.render import latex_escape, markdown_escape, write_report
from harness.report.stats import bootstrap_intervals, metric_values, paired_permutation_test
from harness.pipeline.results import write_ranks

SCRIPT_CAPTION = "<script>alert('x')</script> a & b"


def summary(ranks: np.ndarray) -> dict:
    return {name: float(value) for name, value in metric_values(np.asarray(ranks, dtype=float)).items()}


def cost(pair_macs: float) -> dict:
    return {"method": "m", "counter": "fvcore", "check_counter": "flop-counter", "per_video": 4e9, "per_query": 3e9,
            "score": {"per_pair": pair_macs, "per_text": 0.0, "per_video": 0.0, "fixed": 0.0}, "coarse": None,
            "candidates": None, "timing": {"per_video": {"median_s": 1e-2}, "per_query": {"median_s": 1e-3},
                                           "per_pair": {"median_s": pair_macs * 1e-12}}}


def write_run(folder: Path, methods: dict[str, dict], benchmark: str = "synthetic", split: str = "test-1kA",
              arch: str = "synthetic-small", captions: list[str] | None = None, shape: str = "square",
              owners: list[int] | None = None) -> Path:
    """A run folder as `harness run` writes it: results.json rows plus per-query rank files.
    methods: name -> {"t2v": ranks, "v2t": ranks (optional), "cost": dict, "reported_as": str, "post": str}."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, entries = [], {}
    for name, spec in methods.items():
        for direction in ("t2v", "v2t"):
            if direction not in spec:
                continue
            ranks = np.asarray(spec[direction])
            texts = (captions or [f"caption {i}" for i in range(len(ranks))]) if direction == "t2v" else \
                [f"video{i}" for i in range(len(ranks))]
            videos = [f"video{o}" for o in (owners or range(len(ranks)))] if direction == "t2v" else texts
            label = name if spec.get("post", "none") == "none" else f"{name}+{spec['post']}"
            file = write_ranks(folder, label, split, direction, ranks, np.zeros(len(ranks), bool), texts, videos)
            rows.append({"method": name, "benchmark": benchmark, "split": split, "direction": direction,
                         "stage": "single", "post": spec.get("post", "none"), **summary(ranks), "ties": 0,
                         "coverage": "x", "queries": len(ranks), "gallery": len(ranks), "shape": shape,
                         "ranks_file": file})
        entries[name] = {"cost": spec.get("cost"), "reported_as": spec.get("reported_as")}
    results = {"schema_version": 1, "code_version": "test", "started": "now", "environment": {"device": "cpu"},
               "suite": {"name": "fake", "backbone": {"arch": arch}, "benchmark": {"name": benchmark,
                                                                                   "train_split": "train-9k"}},
               "methods": entries, "rows": rows}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def ranks_with_hits(hits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rank 1 where hit, else a rank in 2..50."""
    return np.where(hits, 1, rng.integers(2, 51, size=len(hits)))


@pytest.fixture
def three_methods(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    n = 40
    captions = [f"query {i}" for i in range(n)]
    captions[3] = SCRIPT_CAPTION
    strong = ranks_with_hits(rng.random(n) < 0.8, rng)
    strong[3] = 1
    weak = ranks_with_hits(rng.random(n) < 0.3, rng)
    weak[3] = 7
    methods = {
        "clip4clip-meanp": {"t2v": weak, "v2t": weak[::-1], "cost": cost(512.0)},
        "a_b%c": {"t2v": strong, "v2t": strong[::-1], "cost": cost(3e6)},
        "middle": {"t2v": ranks_with_hits(rng.random(n) < 0.5, rng), "cost": cost(1e4)},
        "a_b%c ": {"t2v": np.ones(n, int), "post": "dsl"},  # post-processed: never ranked
    }
    return write_run(tmp_path / "run", methods, captions=captions)


def test_leaderboard_marks_best_and_second_in_each_columns_own_direction(three_methods):
    (t2v, v2t) = build_leaderboards([load_run(three_methods)], resamples=200)
    own = {e.label: e for e in t2v.entries if e.kind == "own"}
    assert set(own) == {"clip4clip-meanp", "a_b%c", "middle"}
    assert own["a_b%c"].cells["R1"].mark == "best" and own["middle"].cells["R1"].mark == "second"
    assert own["clip4clip-meanp"].cells["R1"].mark is None
    assert own["a_b%c"].cells["MnR"].mark == "best"  # lower is better
    assert own["clip4clip-meanp"].cells["pair_mmac"].mark == "best"  # the cheapest pair
    assert own["clip4clip-meanp"].cells["time_ratio"].text == "1.00"
    post = [e for e in t2v.entries if e.kind == "post"]
    assert len(post) == 1 and post[0].label.endswith("+ DSL") and post[0].values["R1"] == 100.0
    assert all(cell.mark is None for cell in post[0].cells.values())  # R@1 100 but not ranked
    assert t2v.entries[-1] is post[0]  # listed apart, last
    # online cost of one query against the gallery: query + gallery x pair
    assert own["a_b%c"].values["online_gmac"] == pytest.approx((3e9 + 40 * 3e6) / 1e9)
    assert v2t.comparison is None and t2v.comparison["a"] == "a_b%c" and t2v.comparison["b"] == "clip4clip-meanp"


def test_html_latex_and_markdown_escape_captions_and_method_names(three_methods, tmp_path):
    boards = build_leaderboards([load_run(three_methods)], resamples=100)
    written = write_report(boards, [load_run(three_methods)], ["html", "tex", "md"], tmp_path / "out")
    html = (tmp_path / "out" / "report.html").read_text()
    assert SCRIPT_CAPTION not in html and "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; a &amp; b" in html  # shown, escaped
    assert "a_b%c" in html and html.count('<table class="leaderboard">') == 2 and "<svg" in html
    tex = (tmp_path / "out" / "report.tex").read_text()
    assert r"a\_b\%c" in tex and "a_b%c" not in tex
    assert r"\toprule" in tex and r"\includegraphics" in tex
    assert (tmp_path / "out" / "frontier-synthetic-test-1kA-t2v.pdf").is_file()
    md = (tmp_path / "out" / "report.md").read_text()
    assert r"a\_b%c" in md and "&lt;script&gt;" in md and "<script>" not in md
    assert len(written) == 5  # html, tex, md and a plot per direction


def test_the_reference_method_s_name_is_escaped_in_the_latex_column_header(three_methods, tmp_path):
    boards = build_leaderboards([load_run(three_methods)], reference="a_b%c", resamples=50)
    assert any(column.key == "paired" for column in boards[0].columns)
    write_report(boards, [load_run(three_methods)], ["tex"], tmp_path / "out")
    tex = (tmp_path / "out" / "report.tex").read_text()
    assert r"$\Delta$R@1 vs a\_b\%c (p)" in tex and "vs a_b%c" not in tex


def test_escape_functions_cover_every_special_character():
    assert latex_escape("a_b%c & $x$ #1 {y} ~ ^ \\") == \
        r"a\_b\%c \& \$x\$ \#1 \{y\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    assert markdown_escape("a|b *c* <i>") == r"a\|b \*c\* &lt;i&gt;"


def test_reported_rows_sit_beside_the_matching_row_with_the_difference(tmp_path):
    rng = np.random.default_rng(1)
    ranks = ranks_with_hits(rng.random(1000) < 0.5, rng)
    run = write_run(tmp_path / "run", {"glscl": {"t2v": ranks, "reported_as": "GLSCL"},
                                       "zeroshot": {"t2v": ranks}}, benchmark="msrvtt", arch="ViT-B-32")
    (board,) = build_leaderboards([load_run(run)], reference=None, resamples=50)
    labels = [e.label for e in board.entries]
    assert labels == ["glscl", "GLSCL (reported)", "zeroshot"]
    reported = board.entries[1]
    assert reported.kind == "reported" and reported.values["R1"] == 48.1 and reported.values["MnR"] == 13.8
    assert board.entries[0].values["delta_reported"] == pytest.approx(board.entries[0].values["R1"] - 48.1)
    assert all(c.mark is None for c in reported.cells.values())


def test_bootstrap_interval_has_zero_width_when_every_rank_is_equal():
    for metric, interval in bootstrap_intervals(np.full(200, 3)).items():
        assert interval.low == interval.high, metric
    assert bootstrap_intervals(np.full(200, 3))["MnR"].low == 3.0


def test_bootstrap_covers_the_true_recall_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(200):
        ranks = ranks_with_hits(rng.random(400) < 0.3, rng)
        interval = bootstrap_intervals(ranks, resamples=500, seed=trial)["R1"]
        covered += interval.low <= 30.0 <= interval.high
    assert 0.88 <= covered / 200 <= 0.99


def test_multi_caption_bootstrap_resamples_videos_with_their_captions():
    # 50 videos x 4 captions; a video's captions succeed or fail together: the video is the unit, and the
    # interval is wider than one that treats the 200 captions as independent.
    rng = np.random.default_rng(0)
    per_video = rng.random(50) < 0.5
    ranks = np.repeat(np.where(per_video, 1, 9), 4)
    videos = np.repeat(np.arange(50), 4)
    grouped = bootstrap_intervals(ranks, videos)["R1"]
    independent = bootstrap_intervals(ranks)["R1"]
    assert grouped.high - grouped.low > 1.5 * (independent.high - independent.low)


def test_paired_test_detects_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    base = rng.random(500)
    reference = ranks_with_hits(base < 0.5, rng)
    better = ranks_with_hits(base < 0.6, rng)  # the same queries plus 10% more hits
    planted = paired_permutation_test(better, reference)
    assert planted.difference == pytest.approx(100 * ((better == 1).mean() - (reference == 1).mean()))
    assert planted.difference > 5 and planted.p_value < 0.001
    # Null: two methods with the same success rate, drawn independently per query. Over 200 such pairs the
    # test rejects at the 5% level about 5% of the time (a valid test), far from the planted case's 100%.
    rejected = 0
    for trial in range(200):
        first, second = (ranks_with_hits(rng.random(300) < 0.5, rng) for _ in range(2))
        rejected += paired_permutation_test(first, second, permutations=1000, seed=trial).p_value < 0.05
    assert 0.01 <= rejected / 200 <= 0.10
    same = paired_permutation_test(reference, reference.copy())
    assert same.difference == 0 and same.p_value == 1.0


def test_report_command_writes_every_format(three_methods, tmp_path, capsys):
    previous = os.umask(0o022)
    try:
        assert main(["report", str(three_methods), "--output", str(tmp_path / "r"), "--resamples", "50"]) == 0
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "r" / "report.html").stat().st_mode) == 0o644  # readable by others, as umask allows
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"report.html", "report.tex", "report.md",
                                                             "frontier-synthetic-test-1kA-t2v.pdf",
                                                             "frontier-synthetic-test-1kA-v2t.pdf"}
    assert main(["report", str(three_methods), "--format", "pdf"]) == 2
    assert "choose from html, tex, md" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed (.ci/run installs it)")
def test_latex_compiles_with_pdflatex(three_methods, tmp_path):
    write_report(build_leaderboards([load_run(three_methods)], resamples=50), [load_run(three_methods)], ["tex"],
                 tmp_path)
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:]
    assert (tmp_path / "report.pdf").stat().st_size > 10_000


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="Chromium not installed (.ci/run installs it)")
def test_html_renders_in_headless_chromium_with_tables_and_plot(three_methods, tmp_path):
    write_report(build_leaderboards([load_run(three_methods)], resamples=50), [load_run(three_methods)], ["html"],
                 tmp_path)
    page = (tmp_path / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    dom = subprocess.run([chromium(), *flags, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert dom.count('<table class="leaderboard">') == 2 and dom.count('<table class="intervals">') == 2
    assert "<svg" in dom and "<strong>" in dom and "&lt;script&gt;" in dom
    subprocess.run([chromium(), *flags, f"--screenshot={tmp_path / 'report.png'}", "--window-size=1200,1600", page],
                   capture_output=True, timeout=120)
    assert (tmp_path / "report.png").stat().st_size > 20_000  # a rendered page, not a blank one
