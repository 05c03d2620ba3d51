"""Measured online retrieval cost at gallery scale (`harness cost --gallery`): what one query costs against
galleries of stored features, the sizes that do not fit or would take too long said so, and the report's
section built from it."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_suite
from harness.api.backbone import Backbone, load_clip
from harness.commands.cli import main
from harness.cost.scale import (DiskGallery, MemoryGallery, answer, bytes_per_item, measure_scale, parse_galleries,
                                scale_record, scale_table)
from harness.retrieval.tiles import Scoring, score_in_chunks
from harness.retrieval.two_stage import rerank_block
from methods.eercf import EERCF, EERCFParams
from baselines.clip4clip import MeanP


@pytest.fixture
def meanp(tiny_clip):
    torch.manual_seed(0)
    return MeanP(Backbone(load_clip("auto", tiny_clip, 16)), MeanP.Params()).eval()


def features(method, videos: int, texts: int, frames: int = 2):
    torch.manual_seed(1)
    size = method.backbone.image_size
    with torch.no_grad():
        video = method.encode_video(torch.randn(videos, frames, 3, size, size),
                                    torch.ones(videos, frames, dtype=torch.bool))
        tokens = torch.randint(1, 400, (texts, 16))
        tokens[:, 8] = method.backbone.clip.vocab_size - 1  # EOT: the largest id
        tokens[:, 9:] = 0
        text = method.encode_text(tokens, tokens != 0)
    return text, video


def test_answer_finds_the_top_items_of_the_full_matrix(meanp):
    text, video = features(meanp, 300, 5)
    top = answer(meanp, text, MemoryGallery(video), chunk=64)
    full = meanp.score(text, video)
    assert torch.equal(full.gather(1, top), full.topk(10, dim=1).values)


def test_answer_of_a_two_stage_method_is_the_engines_two_stage_order(clip_file):
    torch.manual_seed(0)
    method = EERCF(Backbone(load_clip("auto", clip_file, 16)), EERCFParams(layers=1, candidates=20, frames=2)).eval()
    text, video = features(method, 60, 4)
    top = answer(method, text, MemoryGallery(video), chunk=16)
    cpu = torch.device("cpu")
    with torch.no_grad():  # the evaluation's path: the coarse matrix, then its rerank of each query's top 20
        coarse = score_in_chunks(method, text, video, Scoring(cpu, 64), score_fn=method.coarse_score)
        engine = rerank_block(method, text, video, coarse, 20, "t2v", Scoring(cpu))
        fine = method.score(text, video).double()
    assert torch.equal(top, engine.topk(10, dim=1).indices)
    for q in range(top.shape[0]):  # the ten returned are fine-scored candidates, in fine-score order
        assert torch.equal(fine[q, top[q]], fine[q, top[q]].sort(descending=True).values)


def test_a_gallery_streamed_from_disk_answers_as_the_one_in_memory(meanp, clip_file, tmp_path):
    text, video = features(meanp, 300, 5)
    on_disk = DiskGallery(tmp_path, video, 300)
    assert all(torch.equal(on_disk.chunk(250, 400)[n], v[250:]) for n, v in video.items())  # the last, short chunk
    assert torch.equal(answer(meanp, text, on_disk, chunk=64), answer(meanp, text, MemoryGallery(video), chunk=64))

    torch.manual_seed(0)  # a two-stage method gathers its candidates' features from the files
    eercf = EERCF(Backbone(load_clip("auto", clip_file, 16)), EERCFParams(layers=1, candidates=20, frames=2)).eval()
    text, video = features(eercf, 60, 4)
    (tmp_path / "eercf").mkdir()
    on_disk = DiskGallery(tmp_path / "eercf", video, 60)
    assert torch.equal(answer(eercf, text, on_disk, chunk=16), answer(eercf, text, MemoryGallery(video), chunk=16))

    repeated = DiskGallery(tmp_path / "eercf", {n: v[:7] for n, v in video.items()}, 20)  # 7 items, written 3 times
    assert all(torch.equal(repeated.chunk(14, 20)[n], v[:6]) for n, v in video.items())


def test_a_size_too_large_for_memory_is_streamed_from_a_scratch_directory(meanp, tmp_path):
    _, video = features(meanp, 1, 1)
    per_video = bytes_per_item(video)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    budget = 100 * per_video + 16 * 2000 * 12  # room for 2,000 queries' scores and one chunk, not for 2,000 videos
    points = measure_scale(meanp, 2, 16, 16, [50, 2000], chunk=64, online_macs={}, memory_budget=budget,
                           scratch=scratch)
    assert [(p.status, p.storage) for p in points] == [("measured", "memory"), ("measured", "disk")]
    assert points[1].one_query_s > 0 and points[1].peak_mib is not None
    assert list(scratch.iterdir()) == []  # the gallery's files are removed once measured

    full_disk = measure_scale(meanp, 2, 16, 16, [2000], chunk=64, online_macs={}, memory_budget=budget,
                              scratch=scratch, disk_budget=1000 * per_video)
    assert full_disk[0].status == "does not fit"
    assert f"{2000 * per_video / 2**30:.1f} GiB > {1000 * per_video / 2**30:.1f} GiB free in {scratch}" in full_disk[0].reason


def test_every_size_is_measured_or_says_why_not(meanp):
    _, video = features(meanp, 1, 1)
    per_video = bytes_per_item(video)
    points = measure_scale(meanp, 2, 16, 16, [200, 2000], chunk=512, online_macs={200: 1.0, 2000: 2.0})
    assert [p.status for p in points] == ["measured", "measured"]
    assert all(p.bytes_per_video == per_video and p.one_query_s > 0 and p.per_query_in_batch_s > 0 for p in points)
    assert all(p.peak_mib is not None and p.peak_mib >= 0 for p in points)
    assert [p.online_macs for p in points] == [1.0, 2.0]

    tight = measure_scale(meanp, 2, 16, 16, [200, 10**9], chunk=512, online_macs={}, memory_budget=2 * per_video * 1000)
    assert tight[0].status == "measured" and tight[1].status == "does not fit"
    assert f"{per_video:,} B per video x 1,000,000,000 videos + 16 queries' scores" in tight[1].reason

    slow = measure_scale(meanp, 2, 16, 16, [200, 10**7], chunk=512, online_macs={}, time_limit=1e-3)
    assert slow[1].status == "too slow" and "linear from 200 videos" in slow[1].reason and slow[1].one_query_s is None

    # a first size far beyond one chunk: judged from one chunk's time, not measured blind
    blind = measure_scale(meanp, 2, 16, 16, [10**7], chunk=512, online_macs={}, time_limit=1e-3)
    assert blind[0].status == "too slow" and "linear from 512 videos" in blind[0].reason


def test_a_size_whose_batch_is_over_the_limit_times_one_query_once(meanp, monkeypatch):
    """Linear times (1 ms per 100 videos a query, in a batch too): at 10^4 the full measurement (3 queries
    and a batch of 16) would take 19 x 0.1 s, over a 1 s limit; one query, 0.1 s, is within it."""
    asked = []

    def timed(method, video, text, gallery, chunk, scratch, repeats, with_batch, time_limit):
        asked.append((gallery, repeats, with_batch))
        return {"one_query_s": gallery * 1e-5, "per_query_in_batch_s": gallery * 1e-5 if with_batch else None,
                "peak_mib": 1.0}

    monkeypatch.setattr("harness.cost.scale._in_child", timed)
    points = measure_scale(meanp, 2, 16, 16, [1000, 10**4, 10**6], chunk=512, online_macs={}, time_limit=1.0)
    assert asked == [(512, 3, True), (1000, 3, True), (10**4, 1, False)]  # 10^6: 10 s a query, not even once
    assert [p.status for p in points] == ["measured", "measured", "too slow"]
    assert points[1].one_query_s == pytest.approx(0.1) and points[1].per_query_in_batch_s is None
    assert points[1].reason == "one query timed once, no batch: 2 s to measure (linear from 1,000 videos) over the 1 s limit"
    assert "about 10 s per query, 190 s to measure (linear from 10,000 videos)" in points[2].reason
    table = scale_table({"meanp": {"scale": scale_record(points)}})
    assert "100.00ms" in table and "one query timed once, no batch" in table


def test_gallery_sizes_parse_or_fail_clearly():
    assert parse_galleries("1e4,1e5,1000") == [1000, 10**4, 10**5]
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="'ten' is not a gallery size"):
        parse_galleries("1e4,ten")


@pytest.mark.slow
def test_cost_command_measures_galleries_and_the_report_shows_them(tmp_path, vatex, tiny_clip, capsys):
    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "zeroshot"}, {"name": "xpool"}])
    cost_file = tmp_path / "cost.json"
    assert main(["cost", str(suite), "--no-timing", "--gallery", "1e2,1e3", "--output", str(cost_file),
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "zeroshot" in out and "1,000" in out
    cost = json.loads(cost_file.read_text())
    for name in ("zeroshot", "xpool"):
        assert [p["gallery"] for p in cost["methods"][name]["scale"]] == [100, 1000]
        assert all(p["status"] == "measured" for p in cost["methods"][name]["scale"])
        assert cost["methods"][name]["scale"][1]["online_macs"] == pytest.approx(
            cost["methods"][name]["online_per_query"].get("1000", cost["methods"][name]["scale"][1]["online_macs"]))
    run_dir = tmp_path / "run"
    assert main(["run", str(suite), "--methods", "zeroshot", "--output", str(run_dir), "--quiet"]) == 0
    assert main(["report", str(run_dir), "--format", "md,html", "--cost", str(cost_file), "--resamples", "50"]) == 0
    markdown = (run_dir / "report" / "report.md").read_text()
    assert "## Online retrieval cost at scale" in markdown
    assert "| xpool | 1,000 |" in markdown
    assert (run_dir / "report" / "report.html").read_text().count("<svg") >= 2  # the frontier and the scale plot
    assert main(["cost", str(suite), "--gallery", "1e4,many", "--quiet"]) == 2
    assert "'many' is not a gallery size" in capsys.readouterr().err
    assert main(["cost", str(suite), "--gallery", "1e2", "--scratch", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert f"--scratch {tmp_path / 'nowhere'}: not a directory" in capsys.readouterr().err
    one = tmp_path / "one.json"
    assert main(["cost", str(suite), "--no-timing", "--methods", "xpool", "--output", str(one), "--quiet"]) == 0
    assert list(json.loads(one.read_text())["methods"]) == ["xpool"]


def test_an_interrupted_cost_measurement_keeps_each_finished_method_and_continues(tmp_path, vatex, tiny_clip,
                                                                                   monkeypatch, capsys):
    import harness.cost.suite as cost_report

    suite = write_suite(tmp_path, vatex, tiny_clip, [{"name": "zeroshot"}, {"name": "clip4clip-meanp"}])
    cost_file = tmp_path / "cost.json"
    measured = []
    real = cost_report.measure_scale

    def interrupted_at_the_second(method, *args, **kwargs):
        if measured:
            raise KeyboardInterrupt
        measured.append(method.name)
        return real(method, *args, **kwargs)

    monkeypatch.setattr(cost_report, "measure_scale", interrupted_at_the_second)
    assert main(["cost", str(suite), "--no-timing", "--gallery", "1e2", "--output", str(cost_file)]) == 130
    partial = json.loads(cost_file.read_text())
    assert list(partial["methods"]) == ["zeroshot"] and partial["pending"] == ["clip4clip-meanp"]
    first = partial["methods"]["zeroshot"]["scale"]

    monkeypatch.setattr(cost_report, "measure_scale", real)
    assert main(["cost", str(suite), "--no-timing", "--gallery", "1e2", "--output", str(cost_file)]) == 0
    assert "zeroshot: kept from the earlier, unfinished measurement" in capsys.readouterr().out
    final = json.loads(cost_file.read_text())
    assert list(final["methods"]) == ["zeroshot", "clip4clip-meanp"] and final["pending"] == []
    assert final["methods"]["zeroshot"]["scale"] == first  # kept, not measured again

    # other settings: nothing kept from an unfinished record
    partial["settings"]["time_limit_s"] = 5.0
    cost_file.write_text(json.dumps(partial))
    assert main(["cost", str(suite), "--no-timing", "--gallery", "1e2", "--output", str(cost_file), "--quiet"]) == 0
    assert json.loads(cost_file.read_text())["methods"]["zeroshot"]["scale"][0]["one_query_s"] != first[0]["one_query_s"]

    cost_file.write_text("not json")
    assert main(["cost", str(suite), "--no-timing", "--gallery", "1e2", "--output", str(cost_file)]) == 2
    assert "is not a readable cost record" in capsys.readouterr().err and cost_file.read_text() == "not json"
