"""The researcher's daily loop: an interrupted run resumed to the same numbers, `harness eval`, `--methods`,
`--set` and `--dry-run`, each recorded in results.json."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import write_suite
from harness.commands.cli import main
from test_faults import snapshot

REPO = Path(__file__).parent.parent
ZEROSHOT = [{"name": "zeroshot"}]
# X-Pool trains with dropout (the global RNG) and validation selection keeps a best state: both must resume.
TRAINED = [{"name": "zeroshot"}, {"name": "xpool"}]
EPOCHS = 40
TRAINING = {"validation_videos": 2, "selection": "validation"}


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_a_run_killed_mid_training_resumes_to_the_rows_and_history_of_an_uninterrupted_run(
        tmp_path, vatex, tiny_clip):
    suite = write_suite(tmp_path, vatex, tiny_clip, TRAINED, epochs=EPOCHS, training=TRAINING)
    reference = tmp_path / "uninterrupted"  # a fresh process like the interrupted one (same torch threads)
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--output", str(reference),
                           "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr

    run_dir = tmp_path / "interrupted"
    process = subprocess.Popen([sys.executable, "-m", "harness", "run", str(suite), "--output", str(run_dir),
                                "--quiet"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = run_dir / "checkpoints" / "xpool.train-state.pt"
    deadline = time.time() + 300
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)  # zeroshot finished, X-Pool a few epochs into its training
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    saved = torch.load(state, weights_only=True)
    stopped_after, at_validation = saved["epoch"], saved["pending"] is not None  # stopped in a validation or not
    assert 1 <= stopped_after < EPOCHS
    assert set(results(run_dir)["methods"]) == {"zeroshot"}

    command = shlex.split(err.strip().splitlines()[-1].split("continue with: ")[1])
    again = subprocess.run([sys.executable, "-m", "harness", *command[1:]], capture_output=True, text=True,
                           cwd=REPO, timeout=600)
    assert again.returncode == 0, again.stderr
    assert f"zeroshot: kept (finished earlier in {run_dir}, same fingerprint)" in again.stdout  # not evaluated again
    where = f"at the validation of epoch {stopped_after}" if at_validation else f"after epoch {stopped_after}"
    assert f"xpool: continuing {where} of {EPOCHS}" in again.stdout
    assert (f"xpool epoch {stopped_after}:" in again.stdout) == at_validation and f"xpool epoch {EPOCHS}:" in again.stdout

    resumed, uninterrupted = results(run_dir), results(reference)
    assert resumed["rows"] == uninterrupted["rows"]  # exactly: every metric and every count
    assert resumed["methods"]["xpool"]["training"] == uninterrupted["methods"]["xpool"]["training"]
    ours = torch.load(run_dir / "checkpoints" / "xpool.pt", weights_only=True)
    theirs = torch.load(reference / "checkpoints" / "xpool.pt", weights_only=True)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    for row in resumed["rows"]:
        assert (run_dir / row["ranks_file"]).read_bytes() == (reference / row["ranks_file"]).read_bytes()
    assert not state.exists()  # removed once the training finished
    assert resumed["resumes"][0]["kept"] == ["zeroshot"]


def test_a_training_state_of_another_run_is_refused_unless_forced(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "clip4clip-meanp"}], epochs=2)
    run_dir = tmp_path / "run"
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 0
    stage = json.loads((run_dir / "stages" / "clip4clip-meanp.train.json").read_text())
    results_file = run_dir / "results.json"
    results_file.unlink()  # as if the run had stopped after training, before its rows were written
    stage["fingerprint"] = "sha256:another"
    (run_dir / "stages" / "clip4clip-meanp.train.json").write_text(json.dumps(stage))
    before = snapshot(run_dir)
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 2
    assert "the unfinished training of clip4clip-meanp there (clip4clip-meanp.train.json) was started by a run " \
           "that differs" in capsys.readouterr().err
    assert snapshot(run_dir) == before
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet", "--force"]) == 0
    assert json.loads((run_dir / "stages" / "clip4clip-meanp.train.json").read_text())["fingerprint"] != "sha256:another"


def test_a_finished_training_is_reused_when_only_the_evaluation_is_missing(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "clip4clip-meanp"}], epochs=2)
    run_dir = tmp_path / "run"
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 0
    first = results(run_dir)
    checkpoint = (run_dir / "checkpoints" / "clip4clip-meanp.pt").read_bytes()
    (run_dir / "results.json").unlink()  # stopped during its evaluation
    capsys.readouterr()
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "clip4clip-meanp: training kept (stages/clip4clip-meanp.train.json, same fingerprint)" in out
    assert "epoch 1:" not in out
    assert results(run_dir)["rows"] == first["rows"]
    assert results(run_dir)["methods"]["clip4clip-meanp"]["training"] == first["methods"]["clip4clip-meanp"]["training"]
    assert (run_dir / "checkpoints" / "clip4clip-meanp.pt").read_bytes() == checkpoint


# -- eval, --methods, --set, --dry-run -------------------------------------------------------------------------

@pytest.fixture
def trained(tmp_path, vatex, tiny_clip) -> tuple[Path, Path]:
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT + [{"name": "clip4clip-meanp"}], epochs=2)
    run_dir = tmp_path / "trained"
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 0
    return suite, run_dir


def test_eval_evaluates_a_given_checkpoint_without_training(tmp_path, trained, capsys):
    suite, run_dir = trained
    checkpoint = run_dir / "checkpoints" / "clip4clip-meanp.pt"
    output = tmp_path / "eval"
    capsys.readouterr()
    assert main(["eval", str(suite), "--checkpoint", f"clip4clip-meanp={checkpoint}", "--output", str(output)]) == 0
    assert "epoch" not in capsys.readouterr().out  # nothing trained
    evaluated, original = results(output), results(run_dir)
    assert set(evaluated["methods"]) == {"clip4clip-meanp"}
    entry = evaluated["methods"]["clip4clip-meanp"]
    assert entry["trained"] is False and entry["checkpoint"] == str(checkpoint)
    assert entry["checkpoint_format"] == "harness" and "training" not in entry
    strip = lambda rows: [{k: v for k, v in r.items()} for r in rows if r["method"] == "clip4clip-meanp"]  # noqa: E731
    assert strip(evaluated["rows"]) == strip(original["rows"])  # the trained run's own numbers
    assert evaluated["invocation"]["command"] == "eval"
    assert evaluated["invocation"]["checkpoints"] == [f"clip4clip-meanp={checkpoint}"]
    assert "benchmark.train_split" not in json.dumps(evaluated.get("benchmark", {}).get("splits", {}))


def test_eval_refuses_a_trainable_method_without_a_checkpoint(trained, capsys):
    suite, _ = trained
    assert main(["eval", str(suite), "--dry-run"]) == 2
    assert "clip4clip-meanp would need training; give each a checkpoint (--checkpoint clip4clip-meanp=" in \
        capsys.readouterr().err
    assert main(["eval", str(suite), "--checkpoint", "clip4clip-meanp"]) == 2
    assert "expected NAME=PATH or NAME=PATH:official|harness" in capsys.readouterr().err


def test_methods_selects_a_subset_and_is_recorded(tmp_path, vatex, tiny_clip):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT + [{"name": "clip4clip-meanp"}])
    output = tmp_path / "subset"
    assert main(["run", str(suite), "--methods", "zeroshot", "--output", str(output), "--quiet"]) == 0
    saved = results(output)
    assert {r["method"] for r in saved["rows"]} == {"zeroshot"} and set(saved["methods"]) == {"zeroshot"}
    assert saved["invocation"] == {"command": "run", "overrides": [], "methods": ["zeroshot"]}
    assert [m["name"] for m in saved["suite"]["methods"]] == ["zeroshot"]
    assert "train" not in saved["benchmark"]["splits"]  # a subset without training reads no training split


def test_set_overrides_a_value_and_is_recorded(tmp_path, vatex, tiny_clip):
    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "clip4clip-meanp"}], epochs=3)
    output = tmp_path / "set"
    assert main(["run", str(suite), "--set", "training.epochs=1", "--set", "methods.clip4clip-meanp.params={}",
                 "--set", "protocol.words=12", "--output", str(output), "--quiet"]) == 0
    saved = results(output)
    assert saved["suite"]["training"]["epochs"] == 1 and saved["suite"]["protocol"]["words"] == 12
    assert len(saved["methods"]["clip4clip-meanp"]["training"]["history"]) == 1
    assert saved["invocation"]["overrides"] == ["training.epochs=1", "methods.clip4clip-meanp.params={}",
                                                "protocol.words=12"]


@pytest.mark.parametrize("override, message", [
    ("training.epoch=1", "training.epoch: unknown key 'epoch'. Allowed here: epochs, "),
    ("training.epochs=many", "training.epochs: got 'many' (str); expected an integer."),
    ("methods.glscl.params.alpha=0.2", "--set methods.glscl.params.alpha=0.2: the suite lists no method 'glscl'; "
                                       "listed: zeroshot"),
    ("methods.zeroshot.params.alpha=0.2", "methods[0].params.alpha: unknown key 'alpha'"),
    ("benchmark.test_splits=[test-9k]", "benchmark.test_splits[0]: unknown split 'test-9k' of vatex"),
    ("training", "--set training: expected KEY=VALUE with a dotted KEY"),
], ids=["bad-key", "bad-value", "unlisted-method", "unknown-param", "unknown-split", "no-value"])
def test_a_bad_set_is_one_clear_error(tmp_path, vatex, tiny_clip, capsys, override, message):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT)
    assert main(["run", str(suite), "--set", override, "--output", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert str(suite) in error and not (tmp_path / "run").exists()


def test_methods_naming_an_unlisted_method_is_one_clear_error(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT)
    assert main(["run", str(suite), "--methods", "zeroshot,glscll", "--quiet"]) == 2
    assert "--methods zeroshot,glscll: the suite lists no 'glscll'; listed: zeroshot" in capsys.readouterr().err


def test_dry_run_says_what_would_run_and_what_is_kept_and_writes_nothing(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT)
    run_dir = tmp_path / "run"
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 0
    more = write_suite(tmp_path, vatex, tiny_clip, ZEROSHOT + [{"name": "clip4clip-meanp"}], epochs=2)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["run", str(more), "--output", str(run_dir), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "test: 4 videos, 8 captions; 4 decoded in the frame cache" in out
    assert "train: 6 videos, 12 captions; 0 decoded in the frame cache" in out
    assert "zeroshot               kept: finished in the run directory, same fingerprint" in out
    assert "clip4clip-meanp        train 2 epoch(s), select (last-epoch), evaluate" in out
    assert "query vs 1e+06 GMAC" in out and "dry run: nothing was trained, decoded or written." in out
    assert snapshot(tmp_path) == before
    assert main(["run", str(more), "--output", str(run_dir), "--dry-run", "--set", "protocol.frames=3"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out.split("resolved suite:\n")[1].split("\n\n")[0])["protocol"]["frames"] == 3
    assert ("zeroshot               refused without --force: finished in the run directory, differently (suite "
            "protocol.frames: 2 in the stored run, 3 now)") in out
    assert snapshot(tmp_path) == before


def test_a_stop_during_an_epoch_s_validation_continues_at_that_validation(tmp_path, vatex, tiny_clip, monkeypatch,
                                                                          capsys):
    import harness.pipeline.train as train_module

    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "xpool"}], epochs=3, training=TRAINING)
    reference = tmp_path / "uninterrupted"
    assert main(["run", str(suite), "--output", str(reference), "--quiet"]) == 0
    real_validation, calls = train_module.validation_r1, []

    def stopped_in_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C while epoch 2 is being validated
        return real_validation(*args, **kwargs)

    monkeypatch.setattr(train_module, "validation_r1", stopped_in_the_second)
    run_dir = tmp_path / "interrupted"
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 130
    saved = torch.load(run_dir / "checkpoints" / "xpool.train-state.pt", weights_only=True)
    assert saved["epoch"] == 2 and saved["pending"]["epoch"] == 2 and "loss_total" in saved["pending"]
    assert [entry["epoch"] for entry in saved["history"]] == [1]  # epoch 2 trained, its validation pending
    monkeypatch.setattr(train_module, "validation_r1", real_validation)
    capsys.readouterr()
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "xpool: continuing at the validation of epoch 2 of 3" in out
    assert results(run_dir)["rows"] == results(reference)["rows"]  # exactly: epoch 2 was not trained again
    assert results(run_dir)["methods"]["xpool"]["training"] == results(reference)["methods"]["xpool"]["training"]


PLUGIN = '''"""A plugin method edited between two runs."""
from dataclasses import dataclass

import torch.nn.functional as F

from harness.api import Features, Method, masked_mean

SCALE = 100.0


@dataclass
class Params:
    """none"""


class Mean(Method):
    name = "edited-plugin"
    Params = Params
    trainable = False

    def encode_video(self, frames, frame_mask) -> Features:
        return {"video": F.normalize(masked_mean(self.backbone.encode_frames(frames), frame_mask), dim=-1)}

    def encode_text(self, tokens, token_mask) -> Features:
        return {"text": F.normalize(self.backbone.encode_sentence(tokens), dim=-1)}

    def score(self, text, video):
        return SCALE * text["text"] @ video["video"].t()
'''


def test_a_plugin_whose_code_changed_is_refused_on_resume_and_rerun_with_force(tmp_path, vatex, tiny_clip,
                                                                               monkeypatch, capsys):
    import importlib

    from harness import registry

    package = tmp_path / "plugins" / "edited_plugin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(package.parent))
    plugin = importlib.import_module("edited_plugin")
    methods = registry.Registry(registry.METHOD_GROUP, registry.methods().plugins() + [
        registry.Plugin("edited-plugin", "edited_plugin:Mean", "edited-plugin", loaded=plugin.Mean)])
    monkeypatch.setattr(registry, "methods", lambda: methods)
    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "edited-plugin"}])
    run_dir = tmp_path / "run"
    assert main(["run", str(suite), "--output", str(run_dir), "--quiet"]) == 0
    first = results(run_dir)
    code = first["methods"]["edited-plugin"]["code"]
    assert code["digest"] and all(row["code"] == code for row in first["rows"])  # recorded with every row
    (package / "__init__.py").write_text(PLUGIN.replace("SCALE = 100.0", "SCALE = 0.0"))  # every score now 0
    capsys.readouterr()
    before = snapshot(run_dir)
    assert main(["run", str(suite), "--resume", str(run_dir), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "edited-plugin code: " in error and "its source changed" in error
    assert snapshot(run_dir) == before
    importlib.reload(plugin)  # the edited code, as a new process would import it
    methods.by_name["edited-plugin"] = [registry.Plugin("edited-plugin", "edited_plugin:Mean", "edited-plugin",
                                                        loaded=plugin.Mean)]
    assert main(["run", str(suite), "--resume", str(run_dir), "--force", "--quiet"]) == 0
    rerun = results(run_dir)
    assert rerun["methods"]["edited-plugin"]["code"]["digest"] != code["digest"]
    assert rerun["resumes"][-1]["forced"] and rerun["resumes"][-1]["kept"] == []
    assert all(row["ties"] == row["queries"] for row in rerun["rows"])  # the edited scores: all 0, all tied


def test_methods_in_worker_processes_give_the_rows_of_one_after_the_other_with_one_thread(tmp_path, vatex,
                                                                                        tiny_clip):
    """`jobs: 2`: the methods run in two worker processes of one torch thread each; their rows, histories and
    checkpoints equal those of the same methods run one after the other in a process of one thread."""
    methods = [{"name": "zeroshot"}, {"name": "clip4clip-meanp"}, {"name": "xpool"}]
    parallel = write_suite(tmp_path, vatex, tiny_clip, methods, epochs=2)
    data = yaml.safe_load(parallel.read_text())
    data["jobs"] = 2
    parallel.write_text(yaml.safe_dump(data))
    serial = write_suite(tmp_path, vatex, tiny_clip, methods, epochs=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    timings = tmp_path / "cache" / "timings" / "tiny.json"  # the suite's last run: zeroshot took longest
    timings.parent.mkdir(parents=True)
    timings.write_text(json.dumps({"zeroshot": 100.0, "xpool": 50.0}))
    runs, printed = {}, {}
    for name, suite in (("parallel", parallel), ("serial", serial)):
        runs[name] = tmp_path / name
        done = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--output", str(runs[name]),
                               "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr
        # the pool is closed and its workers exit by themselves: multiprocessing's resource tracker finds nothing
        # left at exit (a pool terminated after every method had finished left a semaphore, one run in three)
        assert "resource_tracker" not in done.stderr, done.stderr
        printed[name] = done.stdout
    # never timed first, then the longest of the last run
    assert ("3 method(s) in 2 worker processes (one torch thread each), longest first by the last run "
            "(clip4clip-meanp, zeroshot, xpool)") in printed["parallel"]
    ours, theirs = results(runs["parallel"]), results(runs["serial"])
    assert json.loads(timings.read_text()) == {name: round(sum(entry["seconds"].values()), 1)  # this run's, recorded
                                               for name, entry in ours["methods"].items()}
    assert ours["environment"]["jobs"] == 2 and ours["environment"]["torch_threads"] == 1
    assert [r["method"] for r in ours["rows"]] == [r["method"] for r in theirs["rows"]]  # the suite's order
    assert ours["rows"] == theirs["rows"]
    for name in ("clip4clip-meanp", "xpool"):
        assert ours["methods"][name]["training"]["history"] == theirs["methods"][name]["training"]["history"]
        a = torch.load(runs["parallel"] / "checkpoints" / f"{name}.pt", weights_only=True)
        b = torch.load(runs["serial"] / "checkpoints" / f"{name}.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in b)


def test_the_worker_server_starts_early_only_for_a_suite_that_asks_for_workers(tmp_path):
    """`harness run` starts the workers' server before it imports torch when the suite's YAML (or a --set) asks for
    jobs above 1; a suite it cannot read there starts none (loading the suite then says what is wrong)."""
    from argparse import Namespace

    from harness.commands.run import _asks_for_workers

    suite = tmp_path / "suite.yaml"
    suite.write_text("name: s\njobs: 2\n")
    assert _asks_for_workers(Namespace(suite=str(suite), set=[]))
    assert not _asks_for_workers(Namespace(suite=str(suite), set=["jobs=1"]))
    suite.write_text("name: s\n")
    assert not _asks_for_workers(Namespace(suite=str(suite), set=[]))
    assert _asks_for_workers(Namespace(suite=str(suite), set=["jobs = 3"]))
    suite.write_text("jobs: [2\n")  # not YAML
    assert not _asks_for_workers(Namespace(suite=str(suite), set=[]))
    assert not _asks_for_workers(Namespace(suite=str(tmp_path / "missing.yaml"), set=[]))
