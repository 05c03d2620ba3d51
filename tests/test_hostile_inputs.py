"""Inputs a hostile or careless user gives: each ends with one error naming what and where (exit 2, or the
documented exit code), and every file that existed before is byte-identical afterwards.

- a run directory never mixes two sets of videos (a resume after clips were swapped is refused, naming them);
- a resume with another seed is refused before any work (no backbone pre-trained, no video decoded);
- `harness data check` checks the validation split too, and hashes its list file;
- every numeric suite value is range-checked when the suite is read;
- a failed checkpoint write (a full disk) is one error naming the file;
- NaN or infinite numbers are refused in results, baselines and scores;
- the minor ones: --output naming a file, `--methods ,`, a binary suite file, a negative tolerance, empty or
  truncated checkpoints; a resume keeps the earlier invocation's record.
(The cache folder check is in test_cachedir.py, the LaTeX escaping of --reference in test_report.py.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import write_suite
from harness.commands.cli import main
from harness.data.synthetic import write_mp4
from harness.retrieval.tiles import Scoring
from test_faults import ZEROSHOT, snapshot

REPO = Path(__file__).parent.parent


@pytest.fixture
def finished_run(tmp_path, vatex, tiny_clip) -> tuple[Path, Path]:
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT)
    run_dir = tmp_path / "run"
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 0
    return suite, run_dir


# -- 1. the videos are part of what a resume compares -------------------------------------------------------

def test_a_resume_after_two_clips_were_swapped_is_refused_naming_them(finished_run, vatex, capsys):
    suite, run_dir = finished_run
    videos = vatex / "videos"
    first, second = videos / "test0.mp4", videos / "test1.mp4"
    assert first.stat().st_size != second.stat().st_size  # as real clips are: their sizes tell them apart
    first.rename(videos / "swap.mp4")
    second.rename(first)
    (videos / "swap.mp4").rename(second)  # a rename keeps each file's modification time
    capsys.readouterr()
    before = snapshot(run_dir)
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "holds finished results (zeroshot) of a run that differs" in error
    assert "2 of the test videos differ from the stored run's: test0: size" in error and "test1: size" in error
    assert snapshot(run_dir) == before


def test_the_same_videos_moved_to_another_folder_are_the_same_gallery(finished_run, vatex, tmp_path, capsys):
    suite, run_dir = finished_run
    moved = tmp_path / "moved-videos"
    (vatex / "videos").rename(moved)  # a move keeps sizes and modification times
    data = yaml.safe_load(suite.read_text())
    data["benchmark"]["videos"] = str(moved)
    suite.write_text(yaml.safe_dump(data))
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 0
    assert "zeroshot: kept" in capsys.readouterr().out


# -- 6. a changed seed is refused before any work ----------------------------------------------------------

def test_a_resume_with_another_seed_is_refused_before_any_work(finished_run, monkeypatch, capsys):
    import harness.pipeline.run as run_module

    suite, run_dir = finished_run
    started = []
    monkeypatch.setattr(run_module, "preflight", lambda *args, **kwargs: started.append(args))
    before = snapshot(run_dir)
    assert main(["run", str(suite), "--output", str(run_dir), "--set", "seed=7", "--quiet"]) == 2
    assert "suite seed: 42 in the stored run, 7 now" in capsys.readouterr().err
    assert not started  # no backbone loaded or pre-trained, no split read, nothing decoded
    assert snapshot(run_dir) == before


# -- 2. the data check reads the validation split -----------------------------------------------------------

@pytest.fixture
def msvd(tmp_path) -> Path:
    """An MSVD root: two videos per split; the validation split's second video deleted, its first truncated."""
    root = tmp_path / "msvd"
    (root / "videos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    splits = {"train": ["tr0", "tr1"], "val": ["va0", "va1"], "test": ["te0", "te1"]}
    for split, ids in splits.items():
        (root / f"{split}_list.txt").write_text("\n".join(ids) + "\n")
        for vid in ids:
            write_mp4(root / "videos" / f"{vid}.avi", rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), fps=2)
    (root / "captions_msvd.json").write_text(json.dumps({v: [f"a clip called {v}"] for ids in splits.values()
                                                         for v in ids}))
    whole = (root / "videos" / "va0.avi").read_bytes()
    (root / "videos" / "va0.avi").write_bytes(whole[: len(whole) // 3])
    (root / "videos" / "va1.avi").unlink()
    return root


def msvd_suite(tmp_path: Path, root: Path, clip: Path) -> Path:
    path = tmp_path / "msvd.yaml"
    path.write_text(yaml.safe_dump({
        "name": "msvd-check", "cache_dir": str(tmp_path / "cache"),
        "benchmark": {"name": "msvd", "root": str(root), "train_split": "train", "validation_split": "val",
                      "test_splits": ["test"]},
        "backbone": {"arch": "auto", "checkpoint": str(clip)}, "protocol": {"frames": 2},
        "methods": [{"name": "clip4clip-meanp"}]}))
    return path


def test_data_check_checks_the_validation_split_and_hashes_its_list(tmp_path, msvd, tiny_clip, capsys):
    output = tmp_path / "check"
    assert main(["data", "check", str(msvd_suite(tmp_path, msvd, tiny_clip)), "--output", str(output), "--quiet"]) == 1
    report = json.loads((output / "data-check.json").read_text())
    split = {s["split"]: s for s in report["splits"]}
    assert split["val"]["role"] == "validation" and list(split["val"]["missing_ids"]) == ["va1"]
    assert list(split["val"]["unreadable_ids"]) == ["va0"]
    assert split["train"]["unreadable"] == split["test"]["unreadable"] == 0
    assert "val_list.txt" in report["annotations"]
    assert "2 video(s) missing or unreadable" in capsys.readouterr().out


def test_data_check_names_a_validation_video_without_captions(tmp_path, msvd, tiny_clip, capsys):
    captions = json.loads((msvd / "captions_msvd.json").read_text())
    del captions["va1"]
    (msvd / "captions_msvd.json").write_text(json.dumps(captions))
    assert main(["data", "check", str(msvd_suite(tmp_path, msvd, tiny_clip)), "--output", str(tmp_path / "c"),
                 "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"{msvd / 'captions_msvd.json'}: no captions for 1 video(s) of split val: va1" in error


# -- 5. every numeric suite value range-checked -------------------------------------------------------------

@pytest.mark.parametrize("key, value, allowed", [
    ("training.epochs", "0", ">= 1"), ("training.batch_size", "0", ">= 1"), ("training.lr", "-1", "> 0"),
    ("training.lr", ".nan", "> 0"), ("training.lr", ".inf", "> 0"),
    ("training.warmup_proportion", "1.5", ">= 0 and <= 1"), ("evaluation.score_chunk", "0", ">= 1"),
    ("evaluation.batch_size", "-4", ">= 1"), ("benchmark.decode_timeout", "-1", "> 0"),
    ("protocol.frames", "0", ">= 1"), ("protocol.words", "0", ">= 3"), ("seed", "-1", ">= 0"),
    ("methods.zeroshot.params", "{}", None)])
def test_a_value_out_of_range_is_refused_when_the_suite_is_read(tmp_path, vatex, tiny_clip, capsys, key, value,
                                                                 allowed):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT)
    before = snapshot(tmp_path)
    code = main(["run", str(suite), "--set", f"{key}={value}", "--dry-run"])
    if allowed is None:  # the control: a valid value passes
        assert code == 0
        return
    assert code == 2
    error = capsys.readouterr().err.strip()
    name = key.rsplit(".", 1)[-1]
    assert error.count("error:") == 1 and str(suite) in error
    assert f"{name}: got " in error and f"allowed: a finite value {allowed}" in error
    assert snapshot(tmp_path) == before


def test_a_range_is_checked_in_the_file_as_on_the_command_line(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT, epochs=0)
    assert main(["run", str(suite), "--dry-run"]) == 2
    assert f"{suite}: training.epochs: got 0; allowed: a finite value >= 1." in capsys.readouterr().err


# -- 4. a failed checkpoint write ----------------------------------------------------------------------------

def test_a_full_disk_while_writing_a_checkpoint_is_one_error_naming_the_file(tmp_path, vatex, tiny_clip):
    """`harness import-checkpoint` with the output file's size limited as a full disk limits it (torch's archive
    writer raises a RuntimeError, not an OSError); the file written before is intact, no temporary file left."""
    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "clip4clip-meanp"}])
    official = tmp_path / "official.pt"
    state = torch.load(tiny_clip, weights_only=True)
    torch.save({f"clip.{k}": v for k, v in state.items()}, official)
    output = tmp_path / "out" / "meanp.pt"
    output.parent.mkdir()
    output.write_bytes(b"the previous checkpoint")
    limit = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "from harness.commands.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", limit, "import-checkpoint", str(official), "--method",
                           "clip4clip-meanp", "--suite", str(suite), "--output", str(output), "--quiet"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("error:") == 1 and "Traceback" not in done.stderr
    assert f"cannot write checkpoint {output}: " in done.stderr and "(the previous file is intact)" in done.stderr
    assert output.read_bytes() == b"the previous checkpoint"
    assert [p.name for p in output.parent.iterdir()] == ["meanp.pt"]


def test_torch_s_archive_writer_failing_midway_is_one_error_naming_the_file(tmp_path):
    """Where the limit is reached inside torch's archive writer it raises a RuntimeError ("unexpected pos"), which
    a plain OSError handler lets through as a traceback."""
    target = tmp_path / "state.pt"
    code = (
        "import resource, signal, sys, torch\n"
        "from pathlib import Path\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (50000, 50000))\n"
        "from harness.errors import HarnessError\n"
        "from harness.storage.files import atomic_torch_save\n"
        "try:\n"
        f"    atomic_torch_save(Path({str(target)!r}), {{'weights': torch.zeros(100000)}}, 'training state')\n"
        "except HarnessError as error:\n"
        "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"cannot write training state {target}: the write failed" in done.stdout
    assert "(a full disk, or a file size limit) (nothing was written)" in done.stdout
    assert list(tmp_path.iterdir()) == []


# -- 7. NaN and infinity -------------------------------------------------------------------------------------

def test_a_results_file_holding_nan_is_refused_by_check_report_and_baseline(finished_run, tmp_path, capsys):
    _, run_dir = finished_run
    results = json.loads((run_dir / "results.json").read_text())
    results["rows"][1]["R1"] = float("nan")
    (run_dir / "results.json").write_text(json.dumps(results))  # Python writes NaN; JSON has none
    before = snapshot(tmp_path)
    baseline = tmp_path / "baseline.json"
    for command in (["check", str(run_dir), "--write-baseline", str(baseline)],
                    ["check", str(run_dir), "--against", "reported"], ["report", str(run_dir), "--format", "md"]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert f"{run_dir / 'results.json'}: the results file holds a value that is not a finite number at " \
               "$.rows[1].R1" in error
    assert snapshot(tmp_path) == before and not baseline.exists()


def test_a_baseline_holding_infinity_is_refused(finished_run, tmp_path, capsys):
    _, run_dir = finished_run
    baseline = tmp_path / "baseline.json"
    assert main(["check", str(run_dir), "--write-baseline", str(baseline)]) == 0
    data = json.loads(baseline.read_text())
    data["rows"][0]["MnR"] = float("inf")
    baseline.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["check", str(run_dir), "--against", str(baseline)]) == 2
    assert f"{baseline}: the baseline holds a value that is not a finite number at $.rows[0].MnR" in \
        capsys.readouterr().err


def test_nan_scores_stop_the_evaluation_naming_the_method():
    from harness.errors import HarnessError
    from harness.retrieval.ranking import rank_features

    class NaNScores:
        name = "broken-head"

        def candidates(self):
            return None

        def score(self, text, video):
            scores = text["t"] @ video["v"].t()
            scores[0, 1] = float("nan")
            return scores

    text, video = {"t": torch.randn(4, 3)}, {"v": torch.randn(4, 3)}
    for directions in (("t2v", "v2t"), ("t2v",), ("v2t",)):  # the one-pass square path and each direction alone
        with pytest.raises(HarnessError, match=r"broken-head: \d+ of \d+ .*scores.* are NaN"):
            rank_features(NaNScores(), text, video, torch.arange(4), Scoring(torch.device("cpu"), 2), directions=directions)


# -- 8. the minor ones ---------------------------------------------------------------------------------------

def test_output_naming_a_file_says_so(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT)
    target = tmp_path / "a-file.txt"
    target.write_text("mine")
    assert main(["run", str(suite), "--output", str(target), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"the run directory {target} is a file, not a directory" in error and "locked" not in error
    assert target.read_text() == "mine"


@pytest.mark.parametrize("given", [",", " , ,", ""])
def test_methods_naming_no_method_is_refused(tmp_path, vatex, tiny_clip, capsys, given):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT + [{"name": "clip4clip-meanp"}])
    assert main(["run", str(suite), "--methods", given, "--dry-run"]) == 2
    assert f"--methods {given!r}: names no method" in capsys.readouterr().err


def test_a_binary_suite_file_is_one_error(tmp_path, capsys):
    suite = tmp_path / "suite.yaml"
    suite.write_bytes(bytes(range(256)) * 4)
    assert main(["run", str(suite), "--dry-run"]) == 2
    error = capsys.readouterr().err
    assert f"{suite}: not a text file (byte " in error and "Traceback" not in error


@pytest.mark.parametrize("tolerance", ["R1=-1", "R1=nan", "MnR=-5%"])
def test_a_negative_or_nan_tolerance_is_refused(finished_run, tmp_path, capsys, tolerance):
    _, run_dir = finished_run
    baseline = tmp_path / "baseline.json"
    assert main(["check", str(run_dir), "--write-baseline", str(baseline)]) == 0
    capsys.readouterr()
    assert main(["check", str(run_dir), "--against", str(baseline), "--tolerance", tolerance]) == 2
    assert f"--tolerance {tolerance!r}: a tolerance is a finite number, 0 or more." in capsys.readouterr().err


def test_a_resume_with_another_method_selection_keeps_the_first_invocation(tmp_path, vatex, tiny_clip):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT + [{"name": "clip4clip-meanp"}],
                        training={"epochs": 1})
    run_dir = tmp_path / "run"
    assert main(["run", str(suite), "--output", str(run_dir), "--methods", "zeroshot", "--quiet"]) == 0
    assert main(["run", str(suite), "--output", str(run_dir), "--methods", "clip4clip-meanp", "--quiet"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["invocation"]["methods"] == ["clip4clip-meanp"]
    assert results["resumes"][0]["invocation"]["methods"] == ["zeroshot"]


@pytest.mark.parametrize("content, message", [
    (b"", "the file is empty (0 bytes): an interrupted copy or download"),
    ("half", "the file ends early or is damaged")])
def test_an_empty_or_truncated_checkpoint_is_named_plainly(tmp_path, vatex, tiny_clip, capsys, content, message):
    checkpoint = tmp_path / "meanp.pt"
    if content == "half":
        whole = tiny_clip.read_bytes()
        content = whole[: len(whole) // 2]
    checkpoint.write_bytes(content)
    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "clip4clip-meanp", "checkpoint": str(checkpoint),
                                                      "checkpoint_format": "harness"}])
    assert main(["run", str(suite), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"cannot read clip4clip-meanp checkpoint {checkpoint}: {message}" in error
    assert "central directory" not in error and "miniz" not in error
    assert not (tmp_path / "run").exists()


# -- a smoke test on the first videos (--limit) ---------------------------------------------------------------

def test_limit_runs_the_first_videos_labels_every_row_and_is_never_gated(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT + [{"name": "clip4clip-meanp"}])
    run_dir = tmp_path / "limited"
    assert main(["run", str(suite), "--output", str(run_dir), "--limit", "2", "--quiet"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["rows"] and all(row["limit"] == 2 and row["gallery"] == 2 for row in results["rows"])
    assert {row["queries"] for row in results["rows"] if row["direction"] == "t2v"} == {4}  # 2 videos x 2 captions
    assert results["invocation"]["overrides"] == ["benchmark.limit=2"]
    capsys.readouterr()
    for command in (["check", str(run_dir), "--against", "reported"],
                    ["check", str(run_dir), "--write-baseline", str(tmp_path / "b.json")]):
        assert main(command) == 2
        assert "from a --limit run (the first 2 videos of each split): a smoke test" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
    assert main(["report", str(run_dir), "--format", "md", "--resamples", "10"]) == 0
    assert "limited: first 2 videos" in (run_dir / "report" / "report.md").read_text()
    assert main(["run", str(suite), "--resume", str(run_dir), "--quiet"]) == 2  # the full run is another run
    assert "suite benchmark.limit: 2 in the stored run, None now" in capsys.readouterr().err
