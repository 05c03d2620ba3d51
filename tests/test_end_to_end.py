"""`harness run suites/synthetic.yaml` as a user runs it: trains, evaluates, saves, and repeats exactly."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
import pytest

REPO = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


REPEATED = ("zeroshot", "clip4clip-meanp", "xpool")  # the second run repeats these (to keep CI short)


SUITE = yaml.safe_load((REPO / "suites" / "synthetic.yaml").read_text())
OFFICIAL_POSTS = {("glscl", "qbnorm"), ("dicosa", "qbnorm"), ("ts2net", "dsl"), ("clipvip", "dsl")}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, synthetic_cache):
    """The shipped suite, then a copy of it with fewer methods, on the same cache. The suite trains its methods in
    worker processes of one torch thread each (`jobs`) and the backbone pre-trains on one thread, so the numbers
    are those of one thread on any machine: float32 reductions split by thread would otherwise move every
    training with the thread count (R@1 by up to 3.6 between one and two threads)."""
    cache = synthetic_cache
    suite = dict(SUITE, methods=[m for m in SUITE["methods"] if m["name"] in REPEATED])
    repeat = tmp_path_factory.mktemp("suite") / "synthetic_repeat.yaml"
    repeat.write_text(yaml.safe_dump(suite))
    outputs = []
    for name, path in (("first", REPO / "suites" / "synthetic.yaml"), ("second", repeat)):
        output = tmp_path_factory.mktemp(name)
        subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--output", str(output),
                        "--cache-dir", str(cache), "--quiet"], check=True, cwd=REPO)
        outputs.append(output)
    return outputs


def rows(output: Path) -> pd.DataFrame:
    return pd.DataFrame(json.loads((output / "results.json").read_text())["rows"])


def test_results_schema_and_files(two_runs):
    output = two_runs[0]
    results = json.loads((output / "results.json").read_text())
    for key in ("schema_version", "code_version", "environment", "seed", "suite", "protocol", "rows", "methods"):
        assert key in results
    assert results["environment"]["packages"]["torch"]
    assert results["environment"]["torch_threads"] == 1 and results["environment"]["jobs"] == SUITE["jobs"]
    table = rows(output)
    assert list(dict.fromkeys(table["method"])) == [m["name"] for m in SUITE["methods"]]  # the suite's order
    assert set(table["split"]) == {"test-1kA", "test-1kA-multi"} and set(table["direction"]) == {"t2v", "v2t"}
    assert (table["coverage"] == "250/250").all()
    posts = table[table["post"] != "none"]
    assert set(zip(posts["method"], posts["post"])) == OFFICIAL_POSTS
    for (method, post), group in posts.groupby(["method", "post"]):  # every split and direction, beside the plain row
        assert len(group) == 4, (method, post)
    multi = table[(table["split"] == "test-1kA-multi") & (table["direction"] == "t2v")]
    assert (multi["queries"] == 1250).all()
    for _, row in table.iterrows():
        ranks = pd.read_csv(output / row["ranks_file"])
        assert len(ranks) == row["queries"]
        assert (ranks["rank"] <= 1).mean() * 100 == pytest.approx(row["R1"])
    training = results["methods"]["clip4clip-meanp"]["training"]
    assert training["selection"] == "validation" and len(training["history"]) == SUITE["training"]["epochs"]
    assert (output / "checkpoints" / "clip4clip-meanp.pt").is_file()


def test_glscl_logs_every_loss_term_and_records_its_protocol(two_runs):
    entry = json.loads((two_runs[0] / "results.json").read_text())["methods"]["glscl"]
    for epoch in entry["training"]["history"]:
        terms = {k: epoch[f"loss_{k}"] for k in ("total", "contrastive", "diversity", "consistency")}
        assert all(math.isfinite(v) for v in terms.values())
        assert terms["total"] == pytest.approx(terms["contrastive"] + terms["diversity"] + terms["consistency"])
    assert entry["params"]["text_padding"] == "mask-keys" and "official" in entry["protocol"]["text_padding"]
    assert entry["params"]["temperature"] == 3.0 and entry["benchmark_defaults"] == {}


def test_eercf_reports_its_coarse_stage_and_two_stage_with_fine_score_counts(two_runs):
    table = rows(two_runs[0])
    assert set(table[table["method"] != "eercf"]["stage"]) == {"single"}
    eercf = table[table["method"] == "eercf"]
    assert sorted(eercf["stage"]) == ["coarse"] * 4 + ["two-stage"] * 4
    two_stage = eercf[eercf["stage"] == "two-stage"]
    assert (two_stage["candidates"] == 50).all()
    assert (two_stage["fine_scores"] == 50 * two_stage["queries"]).all()  # k per query, not the whole gallery
    assert (two_stage["fine_scores"] < two_stage["all_pairs"]).all()
    history = json.loads((two_runs[0] / "results.json").read_text())["methods"]["glccl"]["training"]["history"]
    assert all(math.isfinite(epoch["loss_score_consistency"]) for epoch in history)


def test_every_method_records_its_cost(two_runs):
    methods = json.loads((two_runs[0] / "results.json").read_text())["methods"]
    for name, entry in methods.items():
        cost = entry["cost"]
        assert cost["counter"].startswith("fvcore") and cost["per_video"] > cost["per_query"] > 0, name
        assert cost["timing"]["per_pair"]["median_s"] > 0, name
    assert methods["clip4clip-meanp"]["cost"]["score"]["per_pair"] == 64  # D multiply-adds per pair
    assert methods["eercf"]["cost"]["online_per_query"]["1000000"] < methods["glscl"]["cost"]["online_per_query"]["1000000"]


def test_fine_tuned_methods_beat_zero_shot_and_zero_shot_beats_chance(two_runs):
    """The separation the README states: zero-shot well above chance and below every fine-tuned method, on both
    splits and directions, none saturated; meanP below seqTransf (order-aware) on the t2v queries of both splits."""
    table = rows(two_runs[0])
    table = table[(table["post"] == "none") & (table["stage"] != "coarse")].set_index(["method", "split", "direction"])
    chance = 100 / 250
    trained = [m["name"] for m in SUITE["methods"] if m["name"] != "zeroshot"]
    for split in ("test-1kA", "test-1kA-multi"):
        for direction in ("t2v", "v2t"):
            zero = table.loc[("zeroshot", split, direction), "R1"]
            assert zero > 5 * chance
            assert table.loc[("clip4clip-meanp", split, direction), "R1"] > zero + 5
            for method in trained:
                assert zero < table.loc[(method, split, direction), "R1"] < 90, (method, split, direction)
        assert table.loc[("clip4clip-meanp", split, "t2v"), "R1"] < table.loc[("clip4clip-seqtransf", split, "t2v"), "R1"]


def test_second_run_gives_the_same_numbers(two_runs):
    first, second = (rows(o).drop(columns=["ranks_file"]) for o in two_runs)
    # only the columns these methods fill (two-stage methods add their own)
    first = first[first["method"].isin(REPEATED)].dropna(axis=1, how="all").reset_index(drop=True)
    assert len(first) == len(second) == 4 * len(REPEATED)
    pd.testing.assert_frame_equal(first, second)


def test_a_saved_checkpoint_evaluates_to_the_same_numbers_without_training(two_runs, tmp_path):
    """A suite entry with `checkpoint:` skips training and reproduces the run that saved it."""
    first = two_runs[0]
    suite = yaml.safe_load((REPO / "suites" / "synthetic.yaml").read_text())
    suite["methods"] = [{"name": "clip4clip-seqtransf", "params": {"layers": 3},
                         "checkpoint": str(first / "checkpoints" / "clip4clip-seqtransf.pt"),
                         "checkpoint_format": "harness"}]
    path = tmp_path / "from_checkpoint.yaml"
    path.write_text(yaml.safe_dump(suite))
    cache = json.loads((first / "results.json").read_text())["suite"]["cache_dir"]
    subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--output", str(tmp_path / "run"),
                    "--cache-dir", cache, "--quiet"], check=True, cwd=REPO)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["methods"]["clip4clip-seqtransf"]["trained"] is False
    again = rows(tmp_path / "run").drop(columns=["ranks_file"]).reset_index(drop=True)
    original = rows(first)
    original = original[original["method"] == "clip4clip-seqtransf"].drop(columns=["ranks_file"])
    original = original.dropna(axis=1, how="all").reset_index(drop=True)
    pd.testing.assert_frame_equal(again, original)


def harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, capture_output=True, text=True)


def test_the_run_matches_the_committed_baseline(two_runs):
    """The CI regression gate: a change that moves any method's numbers fails here until
    reports/baselines/synthetic.json is deliberately rewritten (harness check ... --write-baseline)."""
    done = harness("check", str(two_runs[0]), "--against", str(REPO / "reports" / "baselines" / "synthetic.json"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_report_from_the_run(two_runs, tmp_path):
    done = harness("report", str(two_runs[0]), "--output", str(tmp_path), "--resamples", "200")
    assert done.returncode == 0, done.stderr
    markdown = (tmp_path / "report.md").read_text()
    boards = [line for line in markdown.splitlines() if line.startswith("## synthetic")]
    assert boards == ["## synthetic test-1kA t2v", "## synthetic test-1kA v2t", "## synthetic test-1kA-multi t2v",
                      "## synthetic test-1kA-multi v2t"]
    for method in ("zeroshot", "clip4clip-meanp", "xpool", "glscl", "eercf (coarse)", "glccl"):
        assert f"| {method} |" in markdown.replace("\\", ""), method
    html = (tmp_path / "report.html").read_text()
    assert html.count('<table class="leaderboard">') == 4 and html.count('<figure class="frontier">') == 4
    assert html.count('<figure class="curves">') == len(SUITE["methods"]) - 1  # every trained method
