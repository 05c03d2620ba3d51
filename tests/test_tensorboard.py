"""`training.log: tensorboard`: an event file per method under the run directory whose scalars are the
training's (read back with tensorboard's EventAccumulator), a resumed log without repeated steps, and a clear
error naming the extra where the package is absent."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path

import pytest
import torch

from conftest import write_suite

from harness.commands.cli import main
from harness.errors import HarnessError
from harness.pipeline.tensorboard import TensorBoardLog, open_scalar_log, require_tensorboard
from harness.pipeline.train import warmup_cosine
from harness.suite import TrainingSpec

ABSENT = "the tensorboard package is not installed (pip install .[tensorboard]); these tests read its event files"


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    pytest.importorskip("tensorboard", reason=ABSENT)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})  # 0: keep every value
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_the_event_file_holds_every_scalar_of_the_training_history(tmp_path, vatex, tiny_clip):
    pytest.importorskip("tensorboard", reason=ABSENT)
    training = {"validation_videos": 2, "selection": "validation", "log": "tensorboard"}
    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "xpool"}], epochs=2,
                        training=training)
    run = tmp_path / "run"
    assert main(["run", str(suite), "--output", str(run), "--quiet"]) == 0
    assert [p.name for p in (run / "tensorboard").iterdir()] == ["xpool"]
    record = json.loads((run / "results.json").read_text())["methods"]["xpool"]["training"]
    history, steps = record["history"], record["steps"]
    logged = scalars(run / "tensorboard" / "xpool")
    per_epoch = steps // len(history)
    ends = [per_epoch * e for e in range(1, len(history) + 1)]
    keys = [k for k in history[0] if k != "epoch"]
    assert set(keys) == {"loss_total", "loss_contrastive", "validation_R1"}
    for key in keys:  # the history entry of each epoch, at the step that ends it
        assert [s for s, _ in logged[f"epoch/{key}"]] == ends
        assert [v for _, v in logged[f"epoch/{key}"]] == pytest.approx([e[key] for e in history], rel=1e-6)
    for term in ("loss_total", "loss_contrastive"):  # every step once; an epoch's steps average to its entry
        values = logged[f"step/{term}"]
        assert [s for s, _ in values] == list(range(1, steps + 1))
        means = [sum(v for _, v in values[end - per_epoch : end]) / per_epoch for end in ends]
        assert means == pytest.approx([e[term] for e in history], rel=1e-5)
    spec = TrainingSpec(**{**training, "epochs": 2, "batch_size": 4, "selection": "validation"})
    schedule = [warmup_cosine((s - 1) / steps, spec.warmup_proportion) for s in range(1, steps + 1)]
    assert [v for _, v in logged["step/lr_head"]] == pytest.approx([spec.lr * f for f in schedule], rel=1e-5)
    assert [v for _, v in logged["step/lr_backbone"]] == pytest.approx(
        [spec.lr * spec.coef_lr * f for f in schedule], rel=1e-5)
    checkpoint = torch.load(run / "checkpoints" / "xpool.pt", weights_only=True)
    scale = logged["step/logit_scale"]
    assert [s for s, _ in scale] == list(range(1, steps + 1)) and all(1 < v <= spec.max_logit_scale for _, v in scale)
    selected = scale[ends[record["best_epoch"] - 1] - 1][1]  # the checkpoint: the weights that ended that epoch
    assert selected == pytest.approx(math.exp(float(checkpoint["backbone.clip.logit_scale"])), rel=1e-6)


def test_a_resumed_log_purges_what_the_interrupted_process_logged_after_its_last_saved_epoch(tmp_path):
    pytest.importorskip("tensorboard", reason=ABSENT)
    folder = tmp_path / "tensorboard" / "m"
    terms = lambda value: {"total": torch.tensor(value)}  # noqa: E731
    first = TensorBoardLog(folder, resumed_at=0)  # epoch 1: steps 1-2, saved; then steps 3-4 and a stop
    for step in (1, 2, 3, 4):
        first.step(step, terms(float(step)), {"head": 0.1}, torch.tensor(0.0))
    first.epoch(2, {"epoch": 1, "loss_total": 1.5})
    first.close()
    second = TensorBoardLog(folder, resumed_at=2)  # continues after the saved epoch: steps 3-4 again
    for step in (3, 4):
        second.step(step, terms(10.0 * step), {"head": 0.1}, torch.tensor(0.0))
    second.epoch(4, {"epoch": 2, "loss_total": 35.0})
    second.close()
    logged = scalars(folder)
    assert logged["step/loss_total"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
    assert logged["epoch/loss_total"] == [(2, 1.5), (4, 35.0)]
    assert logged["step/logit_scale"] == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 1.0)]
    again = TensorBoardLog(folder, resumed_at=0)  # a training from the start: the earlier files go
    again.step(1, terms(7.0), {}, torch.tensor(0.0))
    again.close()
    assert scalars(folder)["step/loss_total"] == [(1, 7.0)]


@pytest.fixture
def no_tensorboard(monkeypatch):
    """Imports of the tensorboard package fail, as where it is not installed."""
    real_import = builtins.__import__

    def without_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_tensorboard)


def test_asking_for_tensorboard_without_the_package_names_the_extra(tmp_path, no_tensorboard):
    with pytest.raises(HarnessError, match=r"pip install 'tvr-harness\[tensorboard\]'"):
        require_tensorboard()
    spec = TrainingSpec(log="tensorboard")
    with pytest.raises(HarnessError, match=r"training.log: tensorboard needs the tensorboard package"):
        open_scalar_log(spec, tmp_path / "tensorboard" / "m", "m", rank=0, resumed_at=0)
    assert not (tmp_path / "tensorboard").exists()
    open_scalar_log(TrainingSpec(), None, "m", rank=0, resumed_at=0).close()  # training.log: none needs nothing


def test_a_suite_asking_for_tensorboard_without_the_package_is_refused_before_any_work(tmp_path, vatex, tiny_clip,
                                                                                      no_tensorboard, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "clip4clip-meanp"}], training={"log": "tensorboard"})
    assert main(["run", str(suite), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert "problem(s) found before any work started" in error
    assert "training.log: training.log: tensorboard needs the tensorboard package" in error
    assert not (tmp_path / "run" / "checkpoints").exists()
