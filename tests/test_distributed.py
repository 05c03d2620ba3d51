"""Training in a process group equals training in one process: the loss and every gradient of one step on a
global batch, for every trainable method (2 gloo processes on CPU); the data shards; the log-file progress."""

from __future__ import annotations

import io
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from harness import distributed, registry
from harness.api.conformance import check_backbone, random_inputs, resolve_params
from harness.data.benchmark import Split, Video
from harness.errors import TrainingError
from harness.progress import LineProgress, progress
from harness.pipeline.train import PairBatches, training_step

FRAMES, WORDS, BATCH, WORLD = 4, 12, 6, 2
# On the loss terms and every gradient entry: 1e-5 absolute, relative to the largest magnitude where it exceeds 1
# (CLIP-ViP's summed loss at its logit scale gives gradients near 70: float32 rounding alone is ~5e-5 there).
TOLERANCE = 1e-5


def limit(expected: torch.Tensor) -> float:
    return TOLERANCE * max(1.0, float(expected.abs().max()))


def trainable_methods() -> list[str]:
    return sorted(name for name, cls in registry.methods().items() if cls.trainable)


def build(name: str) -> nn.Module:
    """The method on the small random CLIP, dropout off, in training mode; the same weights on every call."""
    cls = registry.methods()[name]
    backbone = check_backbone(WORDS)
    torch.manual_seed(1)
    method = cls(backbone, resolve_params(cls, {}, FRAMES, WORDS))
    for module in method.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(module, (nn.MultiheadAttention, nn.LSTM)):
            module.dropout = 0.0
    return method.train()


def one_step(name: str, rows: slice) -> dict:
    """Loss terms and gradients of one training step (the engine's step module) on the given rows of the
    global batch."""
    method = build(name)
    inputs = random_inputs(BATCH, FRAMES, WORDS, 16, seed=3)
    step = training_step(method, torch.device("cpu"))
    terms = step(inputs.pixels[rows], inputs.frame_mask[rows], inputs.tokens[rows], inputs.token_mask[rows])
    terms["total"].backward()
    return {"terms": {k: v.detach() for k, v in terms.items()},
            "grads": {k: None if p.grad is None else p.grad.clone() for k, p in method.named_parameters()}}


def rank_worker(rank: int, port: int, names: list[str], folder: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_from_environment()
    try:
        shard = BATCH // WORLD
        results = {name: one_step(name, slice(rank * shard, (rank + 1) * shard)) for name in names}
        torch.save(results, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        distributed.shutdown()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_steps(tmp_path_factory) -> dict[int, dict]:
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(rank_worker, args=(free_port(), trainable_methods(), str(folder)), nprocs=WORLD, join=True)
    return {rank: torch.load(folder / f"rank{rank}.pt", weights_only=True) for rank in range(WORLD)}


def test_every_trainable_method_is_covered():
    assert {"clip4clip-meanp", "clip4clip-seqlstm", "clip4clip-seqtransf", "clip4clip-tighttransf", "xpool",
            "glscl", "eercf", "glccl"} <= set(trainable_methods())


@pytest.mark.parametrize("name", trainable_methods())
def test_two_processes_step_equals_one_process(name, distributed_steps):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank computes; restored so that later tests run as before
    try:
        single = one_step(name, slice(0, BATCH))
    finally:
        torch.set_num_threads(threads)
    for rank, results in distributed_steps.items():
        got = results[name]
        assert got["terms"].keys() == single["terms"].keys()
        for term, value in single["terms"].items():
            difference = (got["terms"][term] - value).abs().item()
            assert difference <= limit(value), f"{name} rank {rank}: loss term {term} differs by {difference:.3g}"
        assert got["grads"].keys() == single["grads"].keys()
        for parameter, expected in single["grads"].items():
            actual = got["grads"][parameter]
            assert (actual is None) == (expected is None), f"{name} rank {rank}: {parameter} has a gradient in one " \
                                                           "setting and none in the other"
            if expected is not None:
                difference = (actual - expected).abs().max().item()
                assert difference <= limit(expected), \
                    f"{name} rank {rank}: gradient of {parameter} differs by {difference:.3g}"
        assert sum(g is not None and g.abs().sum() > 0 for g in got["grads"].values()) > 0


def pairs_split(captions: int) -> Split:
    videos = [Video(f"v{i}", None) for i in range(captions // 2)]
    return Split("train", "multi-caption", videos, [f"caption {i}" for i in range(captions)],
                 [i // 2 for i in range(captions)])


def test_shards_are_disjoint_and_cover_the_global_batch_in_order():
    split = pairs_split(26)
    one = [b.tolist() for b in PairBatches(split, None, 8, 12, 5, "uniform", 2, 16, rank=0, world=1).shards()]
    for world in (2, 3, 4):
        ranks = [list(PairBatches(split, None, 8, 12, 5, "uniform", 2, 16, rank=r, world=world).shards())
                 for r in range(world)]
        assert all(len(shards) == len(one) == 2 for shards in ranks)
        for b, batch in enumerate(one):
            assert [c for shards in ranks for c in shards[b].tolist()] == batch  # rank order = one process's order
            assert all(len(shards[b]) == 12 // world for shards in ranks)


def test_a_batch_that_does_not_split_into_equal_shards_is_refused():
    with pytest.raises(TrainingError, match=r"training.batch_size 10 does not split into 4 equal shards"):
        PairBatches(pairs_split(20), None, 8, 10, 5, "uniform", 2, 16, rank=0, world=4)


def test_progress_in_a_log_is_lines_with_rate_and_eta():
    ticks = iter(range(0, 100, 5))  # 5 s per step (the clock is read at start and after every step)
    stream = io.StringIO()
    steps = LineProgress(range(4), "meanp epoch 1/2", None, stream, interval=9.0, clock=lambda: next(ticks))
    for _ in steps:
        steps.set_postfix(loss="0.5000")
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines == ["meanp epoch 1/2: 2/4 (50%), 0.20 it/s, ETA 10s, loss=0.5000",
                     "meanp epoch 1/2: 4/4 (100%), 0.20 it/s, took 20s, loss=0.5000"]


def test_progress_lines_name_the_rank_under_torchrun(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    stream = io.StringIO()
    list(progress(range(3), "xpool epoch 2/2", stream=stream))
    assert stream.getvalue().startswith("[rank 1/2] xpool epoch 2/2: 3/3 (100%), ")


def test_progress_picks_lines_for_a_file_and_nothing_when_quiet():
    stream = io.StringIO()
    assert isinstance(progress(range(3), "x", stream=stream), LineProgress)
    assert list(progress(range(3), "x", quiet=True, stream=stream)) == [0, 1, 2] and stream.getvalue() == ""


@pytest.mark.slow
def test_harness_run_with_two_processes_trains_as_one(tmp_path, vatex, tiny_clip):
    """`harness run SUITE --nproc 2` (torchrun's agent, 2 gloo processes) ends with the weights and rows of
    the single-process run: meanP has no dropout, and rank 0 draws as one process does."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import write_suite

    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "clip4clip-meanp"}], epochs=2)
    runs = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"run{processes}"
        done = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--output", str(run_dir),
                               "--nproc", str(processes)], capture_output=True, text=True,
                              cwd=Path(__file__).parents[1], env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        runs[processes] = run_dir
    assert "[rank 1/2] clip4clip-meanp epoch 1/2: 3/3 (100%)" in done.stderr  # a log: lines, each naming its rank
    assert done.stdout.count("results: ") == 1  # only rank 0 prints the table and the run directory
    one, two = (torch.load(runs[p] / "checkpoints" / "clip4clip-meanp.pt", weights_only=True) for p in (1, 2))
    assert max((one[k] - two[k]).abs().max().item() for k in one if one[k].is_floating_point()) <= 1e-5
    rows = [[(r["direction"], r["R1"], r["MnR"]) for r in json.loads((runs[p] / "results.json").read_text())["rows"]]
            for p in (1, 2)]
    assert rows[0] == rows[1]
    history = [json.loads((runs[p] / "results.json").read_text())["methods"]["clip4clip-meanp"]["training"]["history"]
               for p in (1, 2)]
    assert [e["loss_total"] for e in history[0]] == pytest.approx([e["loss_total"] for e in history[1]], abs=1e-5)


@pytest.mark.slow
def test_evaluation_with_two_processes_gives_the_rows_and_ranks_of_one(tmp_path, vatex, tiny_clip):
    """`harness eval --nproc 2`: videos and captions encoded in shards, the query blocks ranked in turn by the
    two ranks, everything gathered: rows and per-query rank files byte-equal to one process's, both
    directions, on a multi-caption split, batches and blocks small enough to be dealt out."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import write_suite

    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "zeroshot"}, {"name": "clip4clip-meanp"}], epochs=1)
    trained = tmp_path / "trained"
    repo = Path(__file__).parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--output", str(trained),
                           "--methods", "clip4clip-meanp"], capture_output=True, text=True, cwd=repo, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"eval{processes}"
        done = subprocess.run([sys.executable, "-m", "harness", "eval", str(suite), "--output", str(run_dir),
                               "--methods", "zeroshot,clip4clip-meanp", "--checkpoint",
                               f"clip4clip-meanp={trained / 'checkpoints' / 'clip4clip-meanp.pt'}",
                               "--set", "evaluation.batch_size=3", "--set", "evaluation.score_chunk=3",
                               "--nproc", str(processes), "--quiet"], capture_output=True, text=True, cwd=repo, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[processes] = json.loads((run_dir / "results.json").read_text())
        runs[processes]["folder"] = run_dir
    assert runs[2]["distributed"]["world_size"] == 2 and runs[1]["distributed"]["world_size"] == 1
    assert runs[1]["rows"] == runs[2]["rows"]
    for row in runs[1]["rows"]:
        assert (runs[1]["folder"] / row["ranks_file"]).read_bytes() == (runs[2]["folder"] / row["ranks_file"]).read_bytes()
    assert {r["split"] for r in runs[1]["rows"]} == {"test"} and len(runs[1]["rows"]) == 4
    assert not (runs[2]["folder"] / ".lock").exists()


def test_a_run_with_its_output_redirected_writes_no_carriage_return(tmp_path, vatex, tiny_clip, monkeypatch,
                                                                   capfd):
    """Every long loop goes through the progress helper: lines, never a bar's carriage returns, where the output
    is a file (a Slurm log): a run (decoding, training, encoding, ranking, cost), the synthetic benchmark's
    generation and the small backbone's pre-training."""
    import subprocess
    import sys

    from conftest import write_suite
    import harness.data.synthetic as synthetic
    import harness.data.synthetic_backbone as synthetic_backbone

    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "zeroshot"}, {"name": "clip4clip-meanp"}])
    log = tmp_path / "run.log"
    with log.open("w") as stream:
        done = subprocess.run([sys.executable, "-m", "harness", "run", str(suite), "--output", str(tmp_path / "run")],
                              stdout=stream, stderr=subprocess.STDOUT, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    assert "\r" not in text and "decoding test videos:" in text and "clip4clip-meanp epoch 1/1:" in text
    monkeypatch.setattr(synthetic, "TRAIN_VIDEOS", 3)
    monkeypatch.setattr(synthetic, "TEST_VIDEOS", 2)
    synthetic.generate(tmp_path / "generated", seed=1)
    synthetic_backbone.pretrain(1, steps=2)
    captured = capfd.readouterr()
    assert "generating train videos: 3/3" in captured.err and "pre-training the synthetic backbone: 2/2" in captured.err
    assert "\r" not in captured.err + captured.out
