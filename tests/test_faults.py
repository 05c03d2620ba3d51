"""The faults the harness survives, one test each: what the user sees (exit code, one message naming what
and where) and that every file that existed before is intact afterwards (byte-equal).

- two runs into one run directory; a stale lock left by a killed run
- a run directory holding a different run's results (refused) or the same run's (continued, finished
  methods kept)
- bad method checkpoints, missing annotations and a missing video found before any work starts, all at once
- a results.json of the wrong shape in `harness check` and `harness report`; a results file with another name
- SIGTERM and Ctrl-C during a run: finished methods kept, the continue command printed, exit 143 / 130
- malformed annotations: an unterminated CSV quote, a row with the wrong field count, a hostile pickle
- a full disk while writing results or the frame cache; a video that makes the decoder hang; a corrupt
  frame-cache entry
- warnings that are not the user's business
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import write_suite

import harness.data.frames as frames_module
import harness.storage.files as files_module
from harness.commands.cli import main
from harness.data.benchmark import Video
from harness.data.frames import FrameStore
from harness.data.video import decode

REPO = Path(__file__).parent.parent
def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Every file under `folder` (but those whose relative path starts with one of `skip`) -> its content hash."""
    files = ((str(p.relative_to(folder)), p) for p in sorted(folder.rglob("*")))
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in files
            if not name.startswith(skip) and p.is_file()}


def harness(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


ZEROSHOT = [{"name": "zeroshot"}]


@pytest.fixture
def finished_run(tmp_path, vatex, tiny_clip) -> tuple[Path, Path]:
    """A suite and a run directory holding its finished zero-shot results."""
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT)
    run_dir = tmp_path / "run"
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 0
    return suite, run_dir


# -- run-directory ownership -------------------------------------------------------------------------------

def test_a_second_run_into_a_locked_directory_fails_at_once_naming_the_holder(finished_run, capsys):
    suite, run_dir = finished_run
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = run_dir / ".lock"
        lock.write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "started": "earlier",
                                    "command": "harness run other.yaml"}))
        before = snapshot(run_dir)
        start = time.perf_counter()
        assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 2
        assert time.perf_counter() - start < 5  # at once: no data read, no model built
        error = capsys.readouterr().err
        assert f"{run_dir} is in use by another run (pid {holder.pid} on {socket.gethostname()}" in error
        assert "harness run other.yaml" in error
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_from_a_dead_process_is_reported_with_how_to_clear_it(finished_run, capsys):
    suite, run_dir = finished_run
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then",
                                               "command": "harness run faults.yaml"}))
    before = snapshot(run_dir)
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "locked by a run that no longer exists" in error and f"pid {dead.pid}" in error
    assert f"remove {run_dir / '.lock'}" in error
    assert snapshot(run_dir) == before


def test_a_finished_run_releases_its_lock(finished_run):
    _, run_dir = finished_run
    assert not (run_dir / ".lock").exists() and (run_dir / "results.json").is_file()


# -- a directory that already holds results ----------------------------------------------------------------

def test_a_run_into_a_directory_with_another_runs_results_is_refused_naming_the_difference(
        tmp_path, finished_run, vatex, tiny_clip, capsys):
    _, run_dir = finished_run
    before = snapshot(run_dir)
    other = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT)
    data = yaml.safe_load(other.read_text())
    data["protocol"]["frames"] = 3
    other.write_text(yaml.safe_dump(data))
    assert main(["run", str(other), "--output", str(run_dir), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "holds finished results (zeroshot) of a run that differs" in error
    assert "suite protocol.frames: 2 in the stored run, 3 now" in error
    assert snapshot(run_dir) == before


def test_the_same_suite_into_a_finished_directory_keeps_its_methods_and_adds_the_new_ones(
        tmp_path, finished_run, vatex, tiny_clip, capsys):
    _, run_dir = finished_run
    first = json.loads((run_dir / "results.json").read_text())
    kept_ranks = (run_dir / first["rows"][0]["ranks_file"]).read_bytes()
    more = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT + [{"name": "clip4clip-meanp"}])
    assert main(["run", str(more), "--resume", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert f"zeroshot: kept (finished earlier in {run_dir}, same fingerprint)" in out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["methods"]["zeroshot"] == first["methods"]["zeroshot"]  # not evaluated again
    assert [r for r in results["rows"] if r["method"] == "zeroshot"] == first["rows"]
    assert (run_dir / first["rows"][0]["ranks_file"]).read_bytes() == kept_ranks
    assert {r["method"] for r in results["rows"]} == {"zeroshot", "clip4clip-meanp"}
    assert results["resumes"][0]["kept"] == ["zeroshot"]


def test_resume_needs_a_run_directory_with_results(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT)
    assert main(["run", str(suite), "--resume", str(tmp_path / "nothing")]) == 2
    assert "no results.json there; nothing to continue" in capsys.readouterr().err


# -- pre-flight ----------------------------------------------------------------------------------------------

class Hostile:
    def __reduce__(self):
        return (os.system, ("echo hostile > pwned.txt",))


def test_preflight_reports_every_problem_together_before_any_work(tmp_path, vatex, tiny_clip, capsys):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    hostile = tmp_path / "hostile.pt"
    hostile.write_bytes(pickle.dumps({"weights": Hostile()}))
    mismatched = tmp_path / "meanp-from-another-model.pt"
    import torch

    torch.save({"clip.unrelated": torch.zeros(3)}, mismatched)
    (vatex / "videos" / "test2.mp4").unlink()
    suite = write_suite(tmp_path, vatex, tiny_clip, [
        {"name": "zeroshot"},
        {"name": "xpool", "checkpoint": str(garbage), "checkpoint_format": "harness"},
        {"name": "clip4clip-seqlstm", "checkpoint": str(hostile), "checkpoint_format": "harness"},
        {"name": "clip4clip-meanp", "checkpoint": str(mismatched), "checkpoint_format": "harness"}])
    run_dir = tmp_path / "run"
    before = snapshot(tmp_path)
    start = time.perf_counter()
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 2
    elapsed = time.perf_counter() - start
    error = capsys.readouterr().err
    assert "4 problem(s) found before any work started" in error
    assert "1 of 4 video files are missing: test2" in error
    assert f"methods[1] (xpool) checkpoint: cannot read xpool checkpoint {garbage}" in error
    assert f"methods[2] (clip4clip-seqlstm) checkpoint: cannot read clip4clip-seqlstm checkpoint {hostile}" in error
    assert "loading it fully could run code from the file; the harness reads weights only" in error
    assert "weights_only" not in error  # and no advice to load it without that guard
    assert f"methods[3] (clip4clip-meanp) checkpoint: clip4clip-meanp checkpoint {mismatched}" in error
    assert "does not fit the model" in error and "CLIP checkpoint" not in error
    assert not run_dir.exists() and not (REPO / "pwned.txt").exists() and not Path("pwned.txt").exists()
    assert snapshot(tmp_path) == before
    assert elapsed < 30


def test_preflight_names_an_unusable_device(tmp_path, vatex, tiny_clip, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT)
    data = yaml.safe_load(suite.read_text())
    data["device"] = "cuda"
    suite.write_text(yaml.safe_dump(data))
    assert main(["run", str(suite), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    assert "device: the suite asks for device 'cuda' but no CUDA device is available" in capsys.readouterr().err


# -- results.json read by check, report and resume -----------------------------------------------------------

def test_a_results_file_of_the_wrong_shape_is_one_error_naming_the_file_and_path(finished_run, tmp_path, capsys):
    suite, run_dir = finished_run
    results = json.loads((run_dir / "results.json").read_text())
    good_row = results["rows"][0]
    results["rows"] = {"not": "a list"}
    bad = tmp_path / "bad" / "results.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps(results))
    before = snapshot(bad.parent)
    for command in (["check", str(bad), "--against", "reported"], ["report", str(bad.parent)]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert f"{bad}: not a harness results file: at $.rows: " in error and "is not of type 'array'" in error
    assert snapshot(bad.parent) == before  # no report folder, nothing rewritten
    results["rows"] = [{**good_row, "R1": "high"}]
    bad.write_text(json.dumps(results))
    assert main(["check", str(bad), "--write-baseline", str(tmp_path / "b.json")]) == 2
    assert "at $.rows[0].R1: 'high' is not of type 'number'" in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()
    shutil.copy(bad, run_dir / "results.json")  # resuming reads it through the same check
    before = snapshot(run_dir)
    assert main(["run", str(suite), "--resume", str(run_dir), "--quiet"]) == 2
    assert f"{run_dir / 'results.json'}: not a harness results file: at $.rows[0].R1" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_check_reads_a_results_file_whatever_its_name(finished_run, tmp_path, capsys):
    _, run_dir = finished_run
    renamed = tmp_path / "zeroshot-results.json"
    shutil.copy(run_dir / "results.json", renamed)
    for relative in json.loads(renamed.read_text())["rows"]:  # the ranks files sit beside it, as in a run folder
        (tmp_path / relative["ranks_file"]).parent.mkdir(exist_ok=True)
        shutil.copy(run_dir / relative["ranks_file"], tmp_path / relative["ranks_file"])
    assert main(["check", str(run_dir), "--write-baseline", str(tmp_path / "baseline.json")]) == 0
    assert main(["check", str(renamed), "--against", str(tmp_path / "baseline.json")]) == 0
    assert "check passed" in capsys.readouterr().out
    assert main(["check", str(tmp_path / "absent.json"), "--against", "reported"]) == 2
    assert "no such file or directory" in capsys.readouterr().err


# -- SIGTERM and Ctrl-C --------------------------------------------------------------------------------------

SIGNAL_EPOCHS = 60  # the signal is sent once the second method has written its first epoch's state


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_signal_during_training_keeps_the_finished_method_and_prints_how_to_continue(
        tmp_path, vatex, tiny_clip, signum):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT + [{"name": "clip4clip-meanp"}], epochs=SIGNAL_EPOCHS)
    run_dir = tmp_path / "run"
    # Ctrl-C as a terminal delivers it: a job started in the background inherits SIGINT ignored (so would the run)
    process = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--output", str(run_dir),
                                "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    state = run_dir / "checkpoints" / "clip4clip-meanp.train-state.pt"  # rewritten after every epoch
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and process.poll() is None:  # the second method training
        time.sleep(0.02)
    assert state.exists(), process.communicate()
    finished = ("checkpoints/", ".lock")  # what a run still training may rewrite: not compared
    before = snapshot(run_dir, skip=finished)
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == (f"interrupted: kept 1 finished method(s) (zeroshot) in {run_dir}; not finished: "
                         f"clip4clip-meanp; continue with: harness run {suite} --resume {run_dir} --quiet")
    assert "Traceback" not in err
    after = snapshot(run_dir)
    assert {name: after.get(name) for name in before} == before  # results, ranks, suite: untouched
    assert ".lock" not in after and not [name for name in after if name.endswith(".tmp")]  # released, no half file
    assert torch.load(state, weights_only=True)["epoch"] >= 1  # the training state, whole
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["methods"]) == {"zeroshot"} and {r["method"] for r in results["rows"]} == {"zeroshot"}
    if signum != signal.SIGTERM:
        return
    # the printed command continues the run: zeroshot kept, clip4clip-meanp trained from the start
    command = shlex.split(lines[-1].split("continue with: ")[1])
    assert command[:2] == ["harness", "run"]
    again = subprocess.run([sys.executable, "-m", "harness", *command[1:]], capture_output=True, text=True,
                           cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"zeroshot: kept (finished earlier in {run_dir}, same fingerprint)" in again.stdout
    final = json.loads((run_dir / "results.json").read_text())
    assert final["methods"]["zeroshot"] == results["methods"]["zeroshot"]
    assert len(final["methods"]["clip4clip-meanp"]["training"]["history"]) == SIGNAL_EPOCHS


# -- malformed annotations ------------------------------------------------------------------------------------

def msrvtt_root(tmp_path: Path, test_csv: str) -> Path:
    root = tmp_path / "msrvtt"
    (root / "videos").mkdir(parents=True)
    (root / "MSRVTT_JSFUSION_test.csv").write_text(test_csv)
    return root


def msrvtt_suite(tmp_path: Path, root: Path, clip: Path) -> Path:
    suite = {"name": "msrvtt-bad", "cache_dir": str(tmp_path / "cache"),
             "benchmark": {"name": "msrvtt", "root": str(root), "test_splits": ["test-1kA"]},
             "backbone": {"arch": "auto", "checkpoint": str(clip)}, "methods": ZEROSHOT}
    path = tmp_path / "msrvtt.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.parametrize("body, where, what", [
    ('ret0,msr7,video7,a man sings\nret1,msr8,video8,"a woman\nret2,msr9,video9,a dog runs\n', 3,
     "malformed CSV (unexpected end of data)"),
    ("ret0,msr7,video7,a man sings\nret1,msr8,video8,a woman,dances\n", 3, "5 field(s); the header has 4"),
], ids=["unterminated-quote", "extra-field"])
def test_a_malformed_csv_row_is_an_error_naming_file_and_line(tmp_path, tiny_clip, capsys, body, where, what):
    root = msrvtt_root(tmp_path, "key,vid_key,video_id,sentence\n" + body)
    suite = msrvtt_suite(tmp_path, root, tiny_clip)
    before = snapshot(tmp_path)
    assert main(["data", "check", str(suite), "--output", str(tmp_path / "check"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"{root / 'MSRVTT_JSFUSION_test.csv'}:{where}: {what}" in error
    assert "missing" not in error  # not misread as fewer rows and a missing video
    assert snapshot(tmp_path) == before


def test_a_hostile_caption_pickle_is_refused(tmp_path, tiny_clip, capsys):
    root = tmp_path / "msvd"
    root.mkdir()
    (root / "test_list.txt").write_text("vid1\n")
    (root / "raw-captions.pkl").write_bytes(pickle.dumps({"vid1": [["a", "cat"]], "x": Hostile()}))
    suite = {"name": "msvd-bad", "cache_dir": str(tmp_path / "cache"),
             "benchmark": {"name": "msvd", "root": str(root), "test_splits": ["test"]},
             "backbone": {"arch": "auto", "checkpoint": str(tiny_clip)}, "methods": ZEROSHOT}
    path = tmp_path / "msvd.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["data", "check", str(path), "--output", str(tmp_path / "check"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"{root / 'raw-captions.pkl'}: cannot be read as a pickle of plain data (it refers to posix.system" in error
    assert not (tmp_path / "pwned.txt").exists() and not Path("pwned.txt").exists()


def test_a_malformed_json_sentence_names_its_entry(tmp_path, tiny_clip, capsys):
    root = tmp_path / "msrvtt"
    root.mkdir()
    (root / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr7,video7,a man\n")
    (root / "MSRVTT_data.json").write_text(json.dumps({"sentences": [
        {"video_id": "video7", "caption": "a man", "sen_id": 0}, {"video_id": "video7", "sen_id": 1}]}))
    suite = msrvtt_suite(tmp_path, root, tiny_clip)
    data = yaml.safe_load(suite.read_text())
    data["benchmark"]["test_splits"] = ["test-1kA-multi"]
    suite.write_text(yaml.safe_dump(data))
    assert main(["data", "check", str(suite), "--quiet", "--output", str(tmp_path / "check")]) == 2
    assert f"{root / 'MSRVTT_data.json'}: sentences[1] is {{'video_id': 'video7', 'sen_id': 1}} (KeyError" in \
        capsys.readouterr().err


# -- full disk, hanging decoder, corrupt cache ----------------------------------------------------------------

def full_disk_for(name_part: str, monkeypatch) -> None:
    """Writes of a temporary file whose name contains `name_part` fail as on a full disk."""
    real_open = open

    def failing_open(file, mode="r", *args, **kwargs):
        stream = real_open(file, mode, *args, **kwargs)
        if "w" in mode and name_part in Path(file).name:
            def write(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            stream.write = write
        return stream

    monkeypatch.setattr(files_module, "open", failing_open, raising=False)
    monkeypatch.setattr(frames_module, "open", failing_open, raising=False)


def test_a_full_disk_while_writing_results_keeps_the_previous_results(finished_run, tmp_path, vatex, tiny_clip,
                                                                      monkeypatch, capsys):
    _, run_dir = finished_run
    before = snapshot(run_dir)
    more = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT + [{"name": "clip4clip-meanp"}])
    full_disk_for("results.json", monkeypatch)
    assert main(["run", str(more), "--resume", str(run_dir), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"cannot write results {run_dir / 'results.json'}: No space left on device (the previous file is intact)" \
        in error
    after = snapshot(run_dir)
    assert after["results.json"] == before["results.json"]
    assert not [name for name in after if name.endswith(".tmp")]  # no temporary file left behind


def test_an_unwritable_results_file_keeps_what_was_there(finished_run, tmp_path, vatex, tiny_clip, capsys):
    """The report folder's report.md is a directory here: writing it fails, named, and nothing else moves."""
    _, run_dir = finished_run
    (run_dir / "report" / "report.md").mkdir(parents=True)
    before = snapshot(run_dir)
    assert main(["report", str(run_dir), "--format", "md", "--resamples", "10"]) == 2
    error = capsys.readouterr().err
    assert f"cannot write file {run_dir / 'report' / 'report.md'}: Is a directory" in error
    assert snapshot(run_dir) == before and (run_dir / "report" / "report.md").is_dir()


def test_a_full_disk_while_writing_the_frame_cache_stops_with_a_clear_error(tmp_path, vatex, tiny_clip, monkeypatch,
                                                                            capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT)
    full_disk_for(".npz", monkeypatch)  # decoder workers are forked: they inherit the fault
    assert main(["run", str(suite), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "cannot write frame cache entry" in error and "No space left on device (nothing was written)" in error
    assert not list((tmp_path / "cache" / "frames").rglob("*.npz"))


def test_a_video_that_makes_the_decoder_hang_is_reported_unreadable(tmp_path, vatex, tiny_clip, monkeypatch, capsys):
    real_decode = frames_module.decode

    def hanging_decode(path, *args, **kwargs):
        if Path(path).stem == "test1":
            time.sleep(600)
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(frames_module, "decode", hanging_decode)  # inherited by the forked decoder workers
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT, decode_timeout=3)
    start = time.perf_counter()
    assert main(["data", "check", str(suite), "--output", str(tmp_path / "check"), "--quiet"]) == 1
    assert time.perf_counter() - start < 60
    split = {s["split"]: s for s in json.loads((tmp_path / "check" / "data-check.json").read_text())["splits"]}
    assert list(split["test"]["unreadable_ids"]) == ["test1"]
    assert "decoding took longer than 3 s and was stopped" in split["test"]["unreadable_ids"]["test1"]
    assert split["train"]["unreadable"] == 0
    assert main(["run", str(suite), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    assert "1 of 4 videos cannot be decoded: test1" in capsys.readouterr().err


def test_a_corrupt_frame_cache_entry_is_detected_and_decoded_again(tmp_path, videos, caplog):
    store = FrameStore(tmp_path / "cache", 4, "fps1-linspace", 32, quiet=True)
    video = Video("test0", videos / "test0.mp4")
    frames, mask = store.load(video)
    (entry,) = store.folder.glob("*.npz")
    damaged = bytearray(entry.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte in the middle of the frames
    entry.write_bytes(bytes(damaged))
    again, again_mask = store.load(video)
    assert "is corrupt" in caplog.text and "decoded again" in caplog.text
    assert (again == frames).all() and (again_mask == mask).all()
    fresh = decode(video.path, 4, "fps1-linspace", 32)
    assert (again[: len(fresh)].numpy() == fresh).all()
    assert entry.read_bytes() != bytes(damaged)  # rewritten with good frames


# -- warnings --------------------------------------------------------------------------------------------------

def test_no_warning_that_is_not_the_users_business_and_the_users_own_are_kept():
    listing = subprocess.run([sys.executable, "-W", "default", "-m", "harness", "list"], capture_output=True,
                             text=True, cwd=REPO, timeout=120)
    assert listing.returncode == 0 and listing.stderr == ""
    own = subprocess.run([sys.executable, "-W", "default", "-c",
                          "import warnings, harness.pipeline.run\nwarnings.warn('mine', FutureWarning)"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert "FutureWarning: mine" in own.stderr and "jit" not in own.stderr
