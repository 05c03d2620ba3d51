"""The multi-caption and paragraph shapes through `harness run` on the generated benchmark, with every
metric checked against a plain reference computed from the annotation files and the method's scores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from harness.data.frames import FrameStore
from harness.data.text import tokenize
from harness.data.video import to_pixels
from harness.registry import benchmarks, methods
from harness.pipeline.checkpoints import load_backbone
from harness.suite import load_suite

REPO = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_cache):
    suite = yaml.safe_load((REPO / "suites" / "synthetic.yaml").read_text())
    suite["benchmark"]["test_splits"] = ["test-1kA-multi", "test-paragraph"]
    suite["methods"] = [{"name": "zeroshot"}]
    folder = tmp_path_factory.mktemp("shapes")
    path = folder / "shapes.yaml"
    path.write_text(yaml.safe_dump(suite))
    subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--output", str(folder / "run"),
                    "--cache-dir", str(synthetic_cache), "--quiet"], check=True, cwd=REPO)
    results = json.loads((folder / "run" / "results.json").read_text())
    return folder / "run", results, load_suite(path), synthetic_cache


def annotations(suite, cache: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Test ids (JSFusion file order) and every caption of each, read straight from the generated files."""
    benchmark = benchmarks()["synthetic"](None, None, cache, suite.seed, quiet=True)
    test = pd.read_csv(benchmark.root / "MSRVTT_JSFUSION_test.csv")
    sentences: dict[str, list[tuple[int, str]]] = {}
    for entry in json.loads((benchmark.root / "MSRVTT_data.json").read_text())["sentences"]:
        sentences.setdefault(entry["video_id"], []).append((entry["sen_id"], entry["caption"]))
    return list(test["video_id"]), {v: [c for _, c in sorted(s)] for v, s in sentences.items()}


def zero_shot_scores(suite, cache: Path, ids: list[str], captions: list[str]) -> np.ndarray:
    """captions x videos, all at once (no chunking), from the frozen backbone."""
    benchmark = benchmarks()["synthetic"](None, None, cache, suite.seed, quiet=True)
    backbone = load_backbone(suite, cache, quiet=True)
    method = methods()["zeroshot"](backbone, methods()["zeroshot"].Params()).eval()
    store = FrameStore(cache, suite.protocol.frames, suite.protocol.sampling, backbone.image_size, quiet=True)
    frames, masks = zip(*(store.load(benchmark._video(v)) for v in ids))
    mask = torch.stack(masks)
    tokens, token_mask = tokenize(captions, suite.protocol.words)
    with torch.no_grad():
        video = method.encode_video(to_pixels(torch.stack(frames), mask), mask)
        text = method.encode_text(tokens, token_mask)
        return method.score(text, video).double().numpy()


def plain_rank(row: np.ndarray, truth: int) -> int:
    return 1 + sum(1 for value in row if value > row[truth])


def plain_metrics(ranks: list[int]) -> dict[str, float]:
    ranks = np.array(ranks)
    return {"R1": 100 * np.mean(ranks <= 1), "R5": 100 * np.mean(ranks <= 5), "R10": 100 * np.mean(ranks <= 10),
            "MdR": float(np.median(ranks)), "MnR": float(np.mean(ranks))}


def check_row(output: Path, results: dict, split: str, direction: str, ranks: list[int]) -> None:
    (row,) = [r for r in results["rows"] if r["split"] == split and r["direction"] == direction]
    for metric, value in plain_metrics(ranks).items():
        assert row[metric] == pytest.approx(value, abs=1e-3), (split, direction, metric)  # float32 vs float64 ties
    saved = pd.read_csv(output / row["ranks_file"])
    assert (saved["rank"].to_numpy() != np.array(ranks)).sum() <= 1  # at most a float-rounding tie
    assert row["queries"] == len(ranks)


def test_multi_caption_split_matches_the_plain_reference(run):
    output, results, suite, cache = run
    ids, by_video = annotations(suite, cache)
    captions = [c for v in ids for c in by_video[v]]
    owner = [i for i, v in enumerate(ids) for _ in by_video[v]]
    scores = zero_shot_scores(suite, cache, ids, captions)
    assert scores.shape == (1250, 250)
    t2v = [plain_rank(scores[q], owner[q]) for q in range(len(captions))]
    check_row(output, results, "test-1kA-multi", "t2v", t2v)
    # v2t, the field's convention: each video against caption groups, a group scored by its best caption
    grouped = np.full((len(ids), len(ids)), -np.inf)
    for q, video in enumerate(owner):
        grouped[:, video] = np.maximum(grouped[:, video], scores[q])
    check_row(output, results, "test-1kA-multi", "v2t", [plain_rank(grouped[v], v) for v in range(len(ids))])
    (row,) = [r for r in results["rows"] if r["split"] == "test-1kA-multi" and r["direction"] == "v2t"]
    assert row["shape"] == "multi-caption" and row["v2t_convention"] == "max-over-captions"


def test_paragraph_split_matches_the_plain_reference(run):
    output, results, suite, cache = run
    ids, by_video = annotations(suite, cache)
    paragraphs = [" ".join(by_video[v]) for v in ids]
    scores = zero_shot_scores(suite, cache, ids, paragraphs)
    assert scores.shape == (250, 250)
    check_row(output, results, "test-paragraph", "t2v", [plain_rank(scores[q], q) for q in range(250)])
    check_row(output, results, "test-paragraph", "v2t", [plain_rank(scores[:, v], v) for v in range(250)])
    rows = [r for r in results["rows"] if r["split"] == "test-paragraph"]
    assert {r["shape"] for r in rows} == {"paragraph"} and {r["gallery"] for r in rows} == {250}
