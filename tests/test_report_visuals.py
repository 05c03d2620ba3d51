"""What a researcher looks at in the report: the retrieved videos of the per-query comparison (strips of frames
from the frame cache, shown in headless Chromium), the training curves, and the report's size budget."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import harness.report.render as render
from harness import registry
from harness.data.frames import FrameStore
from harness.data.synthetic import write_mp4
from harness.pipeline.results import write_ranks
from harness.report.curves import training_curves
from harness.report.leaderboard import build_leaderboards, load_run
from harness.report.plot import curve_figure
from harness.report.render import write_report
from harness.report.stats import metric_values
from harness.report.strips import FRAME_PX, FRAMES_PER_STRIP, REPORT_BUDGET, STRIP_HEIGHT, STRIP_WIDTH

VIDEOS = [f"clip{i}" for i in range(8)]
FRAMES = 4  # decoded per video; a strip shows frames 0, 2 and 3 (evenly spaced, first to last)
PICKS = [0, 2, 3]
SIZE = 32  # decoded frame side; strips scale each frame to FRAME_PX
JPEG_TOLERANCE = 6  # mean absolute difference per channel, 0-255 (solid colours survive JPEG almost exactly)


def colour(video: int, frame: int) -> np.ndarray:
    """A different colour for each (video, frame): 4 x 4 x 2 levels, none grey or as pale as the page's lines."""
    index = video * FRAMES + frame
    return np.array([20 + 60 * (index % 4), 30 + 55 * (index // 4 % 4), 60 + 100 * (index // 16)], np.uint8)


# the planted rankings, per query (= caption of VIDEOS[q], its ground truth): the ground truth's rank, and
# the top 5 (ids by index). alpha alone ranks query 0 first, beta alone query 1, neither query 2.
PLANTED = {
    "alpha": {0: (1, [0, 5, 6, 7, 1]), 1: (3, [4, 2, 1, 0, 3]), 2: (6, [3, 4, 5, 6, 7])},
    "beta": {0: (2, [7, 0, 1, 2, 3]), 1: (1, [1, 0, 2, 3, 4]), 2: (4, [0, 1, 3, 2, 4])},
}


def ranking(method: str) -> tuple[np.ndarray, list[list[str]], np.ndarray]:
    """Ranks, top lists and scores of every query; the queries not planted are ranked first."""
    ranks, top = [], []
    for q in range(len(VIDEOS)):
        rank, ids = PLANTED[method].get(q, (1, [q] + [(q + k) % len(VIDEOS) for k in range(1, 5)]))
        assert (ids.index(q) + 1 if q in ids else 6) == rank or rank > 5  # a consistent plant
        ranks.append(rank)
        top.append([VIDEOS[i] for i in ids])
    scores = np.array([[0.9 - 0.1 * k - 0.01 * q for k in range(5)] for q in range(len(VIDEOS))])
    return np.array(ranks), top, scores


@pytest.fixture
def planted_run(tmp_path) -> Path:
    """A VATEX-format benchmark of 8 clips of solid-coloured frames decoded into a frame cache, and a run of two
    trained methods over it whose ranks files hold the planted top lists."""
    root, cache = tmp_path / "vatex", tmp_path / "cache"
    (root / "videos").mkdir(parents=True)
    for v, vid in enumerate(VIDEOS):
        frames = np.stack([np.broadcast_to(colour(v, t), (SIZE, SIZE, 3)) for t in range(FRAMES)])
        write_mp4(root / "videos" / f"{vid}.mp4", np.ascontiguousarray(frames), fps=1)
    (root / "test_list.txt").write_text("\n".join(VIDEOS) + "\n")
    (root / "train_list.txt").write_text("\n".join(VIDEOS) + "\n")
    (root / "ref_captions.json").write_text(json.dumps({vid: [f"what happens in {vid}"] for vid in VIDEOS}))
    split = registry.benchmarks()["vatex"](str(root), None, cache, 0).load_split("test")
    assert FrameStore(cache, FRAMES, "uniform", SIZE, quiet=True).prepare(split.videos) == {}
    run = tmp_path / "run"
    rows, methods = [], {}
    for method in PLANTED:
        ranks, top, scores = ranking(method)
        file = write_ranks(run, method, "test", "t2v", ranks, np.zeros(len(ranks), bool), split.captions,
                           VIDEOS, top, scores)
        rows.append({"method": method, "benchmark": "vatex", "split": "test", "direction": "t2v", "stage": "single",
                     "post": "none", **{k: float(v) for k, v in metric_values(ranks.astype(float)).items()},
                     "queries": len(ranks), "gallery": len(VIDEOS), "shape": "multi-caption", "ranks_file": file})
        history = [{"epoch": e, "loss_total": 3.0 / e + (method == "beta"), "loss_contrastive": 2.0 / e,
                    "loss_extra": 1.0 / e, "validation_R1": 10.0 * e - 4.0 * (e == 3)} for e in (1, 2, 3)]
        methods[method] = {"training": {"selection": "validation", "best_epoch": 2, "best_validation_r1": 20.0,
                                        "steps": 30, "history": history}}
    results = {"schema_version": 1, "code_version": "test", "started": "now", "environment": {"device": "cpu"},
               "seed": 0, "suite": {"name": "planted", "cache_dir": str(cache), "seed": 0,
                                    "backbone": {"arch": "synthetic-small"},
                                    "benchmark": {"name": "vatex", "root": str(root), "videos": None}},
               "protocol": {"frames": FRAMES, "sampling": "uniform", "image_size": SIZE},
               "methods": methods, "rows": rows}
    (run / "results.json").write_text(json.dumps(results))
    return run


def report(run: Path, output: Path, formats: tuple[str, ...] = ("html",)) -> str:
    runs = [load_run(run)]
    write_report(build_leaderboards(runs, reference=None, compare=("alpha", "beta"), resamples=20), runs,
                 list(formats), output)
    return (output / "report.html").read_text() if "html" in formats else ""


STRIP = re.compile(r'<figure class="strip( truth)?" data-video="([^"]+)">(?:<img src="data:image/jpeg;base64,'
                   r'([^"]+)" width="(\d+)" height="(\d+)")?')


def answer_rows(html: str) -> list[list[tuple[str, bool, str | None]]]:
    """Per answer row of the retrieved videos (ground truth, then each method, per example): (video id, marked
    as the ground truth, the embedded JPEG as base64 or None), in the order shown."""
    part = html.split('<div class="retrieved"', 1)[1].split("</section>", 1)[0]
    return [[(m[1], bool(m[0]), m[2] or None) for m in STRIP.findall(row)]
            for row in part.split('<div class="answer">')[1:]]


def decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def test_strips_show_the_planted_top_five_with_the_cached_frames_in_order(planted_run, tmp_path):
    html = report(planted_run, tmp_path / "out")
    rows = answer_rows(html)
    # examples: query 0 (only alpha ranks it first), query 1 (only beta), query 2 (neither); per example the
    # ground truth, then alpha's and beta's top 5
    assert len(rows) == 9
    for example, query in enumerate((0, 1, 2)):
        truth, *answers = rows[3 * example : 3 * example + 3]
        assert [(vid, marked) for vid, marked, _ in truth] == [(VIDEOS[query], True)]
        for method, shown in zip(PLANTED, answers):
            ids = [VIDEOS[i] for i in PLANTED[method][query][1]]
            assert [vid for vid, _, _ in shown] == ids, (method, query)
            assert [marked for _, marked, _ in shown] == [vid == VIDEOS[query] for vid in ids]
    store = FrameStore(tmp_path / "cache", FRAMES, "uniform", SIZE, quiet=True)
    split = registry.benchmarks()["vatex"](str(tmp_path / "vatex"), None, tmp_path / "cache", 0).load_split("test")
    cached = {video.id: store.load(video)[0].numpy() for video in split.videos}
    for vid, _, b64 in (strip for row in rows for strip in row):
        image = decoded(b64).astype(int)
        assert image.shape == (STRIP_HEIGHT, STRIP_WIDTH, 3) == (FRAME_PX, FRAMES_PER_STRIP * FRAME_PX, 3)
        for slot, frame in enumerate(PICKS):
            expected = cached[vid][frame].astype(int).repeat(FRAME_PX // SIZE, 0).repeat(FRAME_PX // SIZE, 1)
            shown = image[:, slot * FRAME_PX : (slot + 1) * FRAME_PX]
            assert np.abs(shown - expected).mean() < JPEG_TOLERANCE, (vid, slot)
            others = [cached[o][f] for o in VIDEOS for f in range(FRAMES) if (o, f) != (vid, frame)]
            assert min(np.abs(shown - other.astype(int).mean((0, 1))).mean() for other in others) > 2 * JPEG_TOLERANCE
    assert len(html.encode()) < REPORT_BUDGET


def tables(html: str) -> list[str]:
    return re.findall(r'<table class="(?:leaderboard|intervals|per-query)">.*?</table>', html, re.S)


@pytest.mark.parametrize("missing", ["cache", "videos"])
def test_a_report_without_the_frame_cache_or_the_data_says_so_and_keeps_its_tables(planted_run, tmp_path, missing):
    with_frames = report(planted_run, tmp_path / "with")
    shutil.rmtree(tmp_path / ("cache" if missing == "cache" else "vatex/videos"))
    without = report(planted_run, tmp_path / "without")
    assert "<img" not in without and with_frames.count("<img") == 33  # 3 examples x (1 + 2 x 5)
    assert tables(without) == tables(with_frames) and len(tables(without)) == 3
    rows = answer_rows(without)
    assert [vid for vid, _, _ in rows[1]] == [VIDEOS[i] for i in PLANTED["alpha"][0][1]]  # ids, ranks, scores kept
    if missing == "cache":
        assert f"Frames not shown: the frame cache {tmp_path / 'cache' / 'frames'}" in without
    else:
        assert without.count(f"its file {tmp_path / 'vatex' / 'videos'}") == 33


def test_the_images_shown_last_are_left_out_to_keep_the_report_under_its_budget(planted_run, tmp_path, monkeypatch):
    full = report(planted_run, tmp_path / "full")
    budget = len(full.encode()) - 10_000  # a few strips too many
    monkeypatch.setattr(render, "REPORT_BUDGET", budget)
    html = report(planted_run, tmp_path / "trimmed")
    assert len(html.encode()) <= budget
    shown = [b64 is not None for row in answer_rows(html) for _, _, b64 in row]
    assert 0 < shown.count(False) < len(shown) and shown == sorted(shown, reverse=True)  # the last ones go
    assert "left out to keep the report under" in html


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def runs_of(line: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], line.astype(int), [0]])))
    return list(zip(edges[::2], edges[1::2]))


def blocks(screen: np.ndarray, rgb: np.ndarray, tolerance: int = 14) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of each solid block of colour `rgb` in a screenshot."""
    mask = (np.abs(screen.astype(int) - rgb.astype(int)) <= tolerance).all(-1)
    found = []
    for top, bottom in runs_of(mask.sum(1) >= FRAME_PX // 2):
        for left, right in runs_of(mask[top:bottom].sum(0) >= (bottom - top) // 2):
            found.append((int(top), int(left), int(bottom - top), int(right - left)))
    return found


@pytest.mark.skipif(chromium() is None, reason="Chromium not installed (.ci/run installs it)")
def test_headless_chromium_shows_the_strips_at_their_size_in_ranking_order(planted_run, tmp_path):
    report(planted_run, tmp_path)
    page = (tmp_path / "report.html").as_uri()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files", "--hide-scrollbars",
             "--force-device-scale-factor=1"]
    subprocess.run([chromium(), *flags, f"--screenshot={tmp_path / 'shot.png'}", "--window-size=1400,2400", page],
                   capture_output=True, timeout=120)
    screen = np.asarray(Image.open(tmp_path / "shot.png").convert("RGB"))
    store = FrameStore(tmp_path / "cache", FRAMES, "uniform", SIZE, quiet=True)
    split = registry.benchmarks()["vatex"](str(tmp_path / "vatex"), None, tmp_path / "cache", 0).load_split("test")
    shown = {video.id: [blocks(screen, store.load(video)[0][f].float().mean((0, 1)).round().numpy()) for f in PICKS]
             for video in split.videos}
    for vid, per_frame in shown.items():
        for slot, found in enumerate(per_frame):
            assert found, (vid, slot)  # drawn
            assert all(size == (FRAME_PX, FRAME_PX) for *_, height, width in found for size in [(height, width)])
            first = {(top, left + slot * FRAME_PX) for top, left, *_ in per_frame[0]}
            assert {(top, left) for top, left, *_ in found} == first  # the strip's frames side by side
    # alpha's answer to query 0: its top 5 on one line, left to right in rank order
    ids = [VIDEOS[i] for i in PLANTED["alpha"][0][1]]
    lines = {top for top, *_ in shown[ids[0]][0]}
    in_order = [top for top in lines
                if all(any(abs(t - top) <= 1 for t, *_ in shown[vid][0]) for vid in ids)
                and sorted(ids, key=lambda vid: next(left for t, left, *_ in shown[vid][0] if abs(t - top) <= 1)) == ids]
    assert in_order, "alpha's top 5 for query 0 not shown in rank order on one line"


def test_training_curves_plot_the_history_with_the_selected_epoch(planted_run, tmp_path):
    (curve, other) = training_curves([load_run(planted_run)])
    figure = curve_figure(curve)
    losses, recall = figure.axes
    history = load_run(planted_run).results["methods"]["alpha"]["training"]["history"]
    lines = {line.get_label(): line for line in losses.get_lines() if not line.get_label().startswith("_")}
    assert set(lines) == {"total", "contrastive", "extra"}
    for term, line in lines.items():
        assert list(line.get_xdata()) == [1, 2, 3]
        assert list(line.get_ydata()) == [entry[f"loss_{term}"] for entry in history]
    assert lines["total"].get_linewidth() > lines["extra"].get_linewidth()
    r1 = [line for line in recall.get_lines() if list(line.get_xdata()) == [1, 2, 3]]
    assert [list(line.get_ydata()) for line in r1] == [[entry["validation_R1"] for entry in history]]
    for axes in (losses, recall):  # the selected epoch: a vertical line at 2
        assert any(list(line.get_xdata()) == [2, 2] for line in axes.get_lines())
    assert "selected epoch 2 (best validation R@1)" in figure.get_suptitle()
    html = report(planted_run, tmp_path / "out", ("html", "tex"))
    section = html.split('<section id="training-curves">', 1)[1].split("</section>", 1)[0]
    assert section.count("<svg") == 2 and "alpha: selected epoch 2" in section and "beta: selected" in section
    assert sorted(p.name for p in (tmp_path / "out").glob("curves-*.pdf")) == ["curves-1-alpha.pdf", "curves-2-beta.pdf"]
    assert "curves-1-alpha.pdf" in (tmp_path / "out" / "report.tex").read_text()
