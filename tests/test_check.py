"""`harness check`: the regression gate against a stored baseline and against the published numbers."""

from __future__ import annotations

import json

import numpy as np

from harness.commands.cli import main
from test_report import cost, ranks_with_hits, write_run


def runs(tmp_path, shift: int = 0):
    rng = np.random.default_rng(0)
    ranks = ranks_with_hits(rng.random(250) < 0.4, rng)
    moved = ranks.copy()
    moved[np.flatnonzero(ranks == 1)[:shift]] = 2  # `shift` queries lose their first place
    spec = lambda r: {"t2v": r, "v2t": r[::-1], "cost": cost(512.0)}  # noqa: E731
    base = write_run(tmp_path / "base", {"zeroshot": spec(ranks), "xpool": spec(ranks[::-1])})
    new = write_run(tmp_path / f"new{shift}", {"zeroshot": spec(moved), "xpool": spec(ranks[::-1])})
    return base, new


def test_identical_run_passes_and_a_planted_regression_fails(tmp_path, capsys):
    base, same = runs(tmp_path)
    baseline = tmp_path / "baselines" / "fake.json"
    assert main(["check", str(base), "--write-baseline", str(baseline)]) == 0
    assert len(json.loads(baseline.read_text())["rows"]) == 4
    assert main(["check", str(same / "results.json"), "--against", str(baseline)]) == 0
    assert "check passed" in capsys.readouterr().out
    _, regressed = runs(tmp_path, shift=3)  # R@1 -1.2 points on zeroshot t2v
    assert main(["check", str(regressed), "--against", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert "moved" in out and "zeroshot" in out and "R1" in out and "check FAILED" in out
    moved = [line for line in out.splitlines() if line.endswith(" moved") and "ok," not in line]
    assert len(moved) == 2 and all(line.startswith("zeroshot") for line in moved)  # t2v and v2t R@1 only
    # a looser tolerance lets it through; a relative tolerance on the MACs is accepted
    assert main(["check", str(regressed), "--against", str(baseline), "--tolerance", "R1=1.5",
                 "--tolerance", "R5=1.5", "--tolerance", "per_pair_macs=1%"]) == 0


def test_a_baseline_row_missing_from_the_run_fails(tmp_path, capsys):
    base, _ = runs(tmp_path)
    baseline = tmp_path / "b.json"
    main(["check", str(base), "--write-baseline", str(baseline)])
    partial = write_run(tmp_path / "partial", {"zeroshot": {"t2v": np.ones(10, int), "cost": cost(512.0)}})
    assert main(["check", str(partial), "--against", str(baseline)]) == 1
    assert "missing" in capsys.readouterr().out


def test_bad_tolerance_and_missing_baseline_are_named(tmp_path, capsys):
    base, _ = runs(tmp_path)
    assert main(["check", str(base), "--against", str(tmp_path / "absent.json")]) == 2
    assert "baseline not found" in capsys.readouterr().err
    assert main(["check", str(base), "--against", "reported", "--tolerance", "R2=1"]) == 2
    assert "METRIC one of R1, R5, R10, MdR, MnR" in capsys.readouterr().err


def glscl_run(tmp_path, name: str, r1: float):
    """A run whose GLSCL MSR-VTT 1k-A t2v row is built to the published numbers (48.1/73.9/82.3/2.0/13.8),
    with R@1 set to r1; zeroshot has no published counterpart."""
    run = write_run(tmp_path / name, {"glscl": {"t2v": np.ones(4, int), "reported_as": "GLSCL"},
                                      "zeroshot": {"t2v": np.ones(4, int)}}, benchmark="msrvtt", arch="ViT-B-32")
    results = json.loads((run / "results.json").read_text())
    for row in results["rows"]:
        if row["method"] == "glscl":
            row.update(R1=r1, R5=73.9, R10=82.3, MdR=2.0, MnR=13.8)
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_against_reported_passes_the_published_row_and_fails_two_points_lower(tmp_path, capsys):
    assert main(["check", str(glscl_run(tmp_path, "match", 48.1)), "--against", "reported"]) == 0
    out = capsys.readouterr().out
    assert "no published counterpart" in out and "zeroshot" in out  # listed, not counted as passing
    assert main(["check", str(glscl_run(tmp_path, "lower", 46.1)), "--against", "reported"]) == 1
    out = capsys.readouterr().out
    assert "moved" in out and "48.1" in out and "46.1" in out


def test_against_reported_with_nothing_comparable_fails(tmp_path, capsys):
    run = write_run(tmp_path / "synthetic", {"zeroshot": {"t2v": np.ones(4, int)}})
    assert main(["check", str(run), "--against", "reported"]) == 1
    assert "no published counterpart" in capsys.readouterr().out


def with_environment(run_dir, **environment):
    results_file = run_dir / "results.json"
    results = json.loads(results_file.read_text())
    results["environment"] = {"device": "cpu", "device_name": "Intel Xeon", "packages": {"torch": "2.14.1"},
                              **environment}
    results_file.write_text(json.dumps(results))
    return run_dir


def test_a_move_under_another_thread_count_or_vector_kernels_is_explained(tmp_path, capsys):
    base, _ = runs(tmp_path)
    _, regressed = runs(tmp_path, shift=3)
    with_environment(base, torch_threads=2, cpu_capability="AVX512", mkl_branch="COMPATIBLE", onednn=False)
    baseline = tmp_path / "b.json"
    main(["check", str(base), "--write-baseline", str(baseline)])
    assert json.loads(baseline.read_text())["environment"]["torch_threads"] == 2
    capsys.readouterr()
    assert main(["check", str(with_environment(regressed, torch_threads=8, cpu_capability="AVX2", mkl_branch="AUTO",
                                               onednn=True)), "--against", str(baseline)]) == 1  # explained, failed
    out = capsys.readouterr().out
    assert ("another environment (torch_threads: 2 -> 8; cpu_capability: AVX512 -> AVX2; mkl_branch: COMPATIBLE -> "
            "AUTO; onednn: False -> True)") in out
    assert main(["check", str(with_environment(regressed, torch_threads=2, cpu_capability="AVX512",
                                               mkl_branch="COMPATIBLE", onednn=False, device_name="AMD EPYC")),
                 "--against", str(baseline)]) == 1
    assert "another environment" not in capsys.readouterr().out  # the same kernels on another CPU: the code's move
    older = json.loads(baseline.read_text())
    del older["environment"]  # a baseline written before the environment was recorded: nothing to compare
    baseline.write_text(json.dumps(older))
    main(["check", str(regressed), "--against", str(baseline)])
    assert "another environment" not in capsys.readouterr().out
