"""Every benchmark loader on a small data root written in that benchmark's exact file formats, with
generated stand-in videos: splits, query and gallery counts, ground truth and evaluation shape."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.data.benchmark import check_videos
from harness.data.benchmarks.activitynet import ActivityNet
from harness.data.benchmarks.didemo import DiDeMo
from harness.data.benchmarks.lsmdc import LSMDC
from harness.data.benchmarks.msvd import MSVD
from harness.data.benchmarks.vatex import VATEX
from harness.data.frames import FrameStore
from harness.data.synthetic import write_mp4
from harness.errors import DataError
from harness.pipeline.run import run_suite
from harness.suite import load_suite


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """A 40-second H.264 clip at 2 fps (tiny frames): long enough to show DiDeMo's 0-31 s span."""
    path = tmp_path_factory.mktemp("video") / "stand_in.mp4"
    frames = np.zeros((80, 32, 32, 3), dtype=np.uint8)
    frames[..., 0] = (np.arange(80) * 3)[:, None, None]  # red grows with time
    write_mp4(path, frames, fps=2)
    return path


def link_videos(stand_in: Path, folder: Path, names: list[str]) -> None:
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).hardlink_to(stand_in)


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


# --- MSVD -----------------------------------------------------------------------------------------

MSVD_CAPTIONS = {
    "-4wsuPCjDBc_5_15": ["a squirrel eats a nut", "an animal is eating", "a chipmunk eats"],
    "-7KMZQEsJW4_205_208": ["a man plays a guitar", "someone plays music"],
    "-8y1Q0rA3n8_108_115": ["a girl dances", "a child is dancing", "a kid dances", "dancing"],
    "0lh_UWF9ZP4_62_69": ["a cat jumps"],
}


def msvd_root(tmp_path: Path, stand_in: Path, caption_format: str) -> Path:
    ids = list(MSVD_CAPTIONS)
    tmp_path.mkdir(exist_ok=True)
    write_lines(tmp_path / "train_list.txt", ids[:2])
    write_lines(tmp_path / "val_list.txt", ids[2:3])
    write_lines(tmp_path / "test_list.txt", [ids[2], ids[0], ids[3]])
    if caption_format == "pkl":  # CLIP4Clip/DiCoSA: token lists
        with (tmp_path / "raw-captions.pkl").open("wb") as handle:
            pickle.dump({v: [c.split() for c in caps] for v, caps in MSVD_CAPTIONS.items()}, handle)
    else:  # X-Pool: strings
        (tmp_path / "captions_msvd.json").write_text(json.dumps(MSVD_CAPTIONS))
    (tmp_path / "videos").mkdir()
    link_videos(stand_in, tmp_path / "videos", [f"{v}.avi" for v in ids])
    return tmp_path


@pytest.mark.parametrize("caption_format", ["pkl", "json"])
def test_msvd_multi_caption_from_either_caption_file(tmp_path, stand_in, caption_format):
    root = msvd_root(tmp_path, stand_in, caption_format)
    test = MSVD(str(root), None, tmp_path).load_split("test")
    assert test.shape == "multi-caption"
    assert [v.id for v in test.videos] == ["-8y1Q0rA3n8_108_115", "-4wsuPCjDBc_5_15", "0lh_UWF9ZP4_62_69"]
    assert len(test.videos) == 3 and len(test.captions) == 4 + 3 + 1  # gallery 3, queries 8
    assert test.caption_video == [0, 0, 0, 0, 1, 1, 1, 2]  # ground truth: each caption's own video
    assert test.captions[4] == "a squirrel eats a nut"  # tokens joined with spaces
    assert test.videos[0].path == root / "videos" / "-8y1Q0rA3n8_108_115.avi"
    assert check_videos(test, allow_partial=False).coverage == "3/3"
    train = MSVD(str(root), None, tmp_path).load_split("train")
    assert len(train.videos) == 2 and len(train.captions) == 5


def test_msvd_run_selects_the_checkpoint_on_its_own_val_split(tmp_path, stand_in, tiny_clip):
    root = msvd_root(tmp_path / "msvd", stand_in, "json")
    suite = {"name": "msvd-tiny", "cache_dir": str(tmp_path / "cache"),
             "benchmark": {"name": "msvd", "root": str(root), "train_split": "train", "validation_split": "val",
                           "test_splits": ["test"]},
             "backbone": {"arch": "auto", "checkpoint": str(tiny_clip)}, "protocol": {"frames": 4},
             "training": {"epochs": 2, "batch_size": 2}, "methods": [{"name": "clip4clip-meanp"}]}
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(suite))
    results = run_suite(load_suite(tmp_path / "suite.yaml"), tmp_path / "run", quiet=True, log=lambda *_: None)
    assert results["protocol"]["validation_split"] == "val" and results["protocol"]["validation_videos"] == 1
    training = results["methods"]["clip4clip-meanp"]["training"]
    assert len(training["history"]) == 2 and all("validation_R1" in e for e in training["history"])
    assert results["benchmark"]["splits"]["train"]["videos"] == 2  # nothing carved from training
    assert {(r["queries"], r["gallery"]) for r in results["rows"]} == {(8, 3), (3, 3)}  # t2v, v2t


def test_msvd_caption_files_are_named_when_absent_or_wrong(tmp_path, stand_in):
    write_lines(tmp_path / "test_list.txt", ["a"])
    with pytest.raises(DataError, match="raw-captions.pkl.*captions_msvd.json"):
        MSVD(str(tmp_path), None, tmp_path).load_split("test")
    (tmp_path / "captions_msvd.json").write_text(json.dumps({"a": "one caption, not a list"}))
    with pytest.raises(DataError, match="captions_msvd.json.*a list of strings"):
        MSVD(str(tmp_path), None, tmp_path).load_split("test")
    (tmp_path / "captions_msvd.json").write_text(json.dumps({"b": ["x"]}))
    with pytest.raises(DataError, match=r"no captions for 1 video\(s\) of split test: a"):
        MSVD(str(tmp_path), None, tmp_path).load_split("test")


# --- DiDeMo ---------------------------------------------------------------------------------------

def didemo_root(tmp_path: Path, stand_in: Path) -> Path:
    names = ["10015567@N08_3655084291_d8b58466fa.mov", "10223543@N05_2567011154_abcdef.mp4", "3@N00_1_a.m4v"]
    write_lines(tmp_path / "test_list.txt", names[:2])
    entries = [
        {"video": names[0], "description": "a dog runs.", "times": [[0, 0], [0, 1]]},
        {"video": names[1], "description": "the camera pans left", "times": [[2, 3]]},
        {"video": names[2], "description": "not in the test list", "times": [[0, 0]]},
        {"video": names[0], "description": "the dog stops", "times": [[3, 3], [3, 4]]},
    ]
    (tmp_path / "test_data.json").write_text(json.dumps(entries))
    (tmp_path / "videos").mkdir()
    # the first as listed; the second transcoded to .mp4 under the same stem (also how it is listed here)
    link_videos(stand_in, tmp_path / "videos", [names[0], names[1]])
    return tmp_path


def test_didemo_paragraphs_square_and_the_0_31_second_span(tmp_path, stand_in):
    root = didemo_root(tmp_path, stand_in)
    split = DiDeMo(str(root), None, tmp_path).load_split("test")
    assert split.shape == "paragraph"
    assert len(split.videos) == len(split.captions) == 2 and split.caption_video == [0, 1]
    assert split.captions == ["a dog runs. the dog stops", "the camera pans left"]  # file order, joined
    assert all(v.end_second == 31 for v in split.videos)
    assert DiDeMo.protocol_defaults == {"frames": 64, "words": 64}
    # 64 frames asked, 40 s of video at 1 frame a second: only seconds 0..31 are decoded (32 frames).
    store = FrameStore(tmp_path / "cache", 64, "fps1-linspace", 16, quiet=True)
    assert store.prepare(split.videos) == {}
    frames, mask = store.load(split.videos[0])
    assert int(mask.sum()) == 32
    assert abs(int(frames[31, 8, 8, 0]) - 31 * 2 * 3) <= 6  # the frame at second 31 (index 62)


# --- LSMDC ----------------------------------------------------------------------------------------

LSMDC_TEST = [
    "1010_TITANIC_00.41.32.072-00.41.40.196\t00.41.32.072\t00.41.40.196\t00.41.31.510\t00.41.40.738\tSOMEONE stares.",
    "1012_Unbreakable_00.05.16.065-00.05.21.941\t00.05.16.065\t00.05.21.941\t00.05.15.5\t00.05.22.5\tHe sits down.",
    "1014_2012_00.01.21.399-00.01.23.997\t00.01.21.399\t00.01.23.997\t00.01.20.8\t00.01.24.5\tThe car drives off.",
]


def test_lsmdc_square_test_nested_videos_and_multi_sentence_training(tmp_path, stand_in):
    (tmp_path / "LSMDC16_challenge_1000_publictect.csv").write_text("\n".join(LSMDC_TEST) + "\n")
    repeated = LSMDC_TEST[0].replace("SOMEONE stares.", "SOMEONE looks up.")
    (tmp_path / "LSMDC16_annos_training.csv").write_text("\n".join(LSMDC_TEST[1:] + [LSMDC_TEST[0], repeated]) + "\n")
    (tmp_path / "videos").mkdir()
    link_videos(stand_in, tmp_path / "videos", ["1010_TITANIC/1010_TITANIC_00.41.32.072-00.41.40.196.avi",
                                                "1012_Unbreakable/1012_Unbreakable_00.05.16.065-00.05.21.941.avi",
                                                "1014_2012_00.01.21.399-00.01.23.997.avi"])  # flat layout
    test = LSMDC(str(tmp_path), None, tmp_path).load_split("test")
    assert test.shape == "square" and len(test.videos) == len(test.captions) == 3
    assert test.caption_video == [0, 1, 2] and test.captions[2] == "The car drives off."
    assert test.videos[0].path == tmp_path / "videos" / "1010_TITANIC" / f"{test.videos[0].id}.avi"
    assert test.videos[2].path == tmp_path / "videos" / f"{test.videos[2].id}.avi"
    assert check_videos(test, allow_partial=False).coverage == "3/3"
    train = LSMDC(str(tmp_path), None, tmp_path).load_split("train")
    assert train.shape == "multi-caption" and len(train.videos) == 3 and len(train.captions) == 4
    assert train.caption_video == [0, 1, 2, 2]


def test_lsmdc_a_malformed_line_is_named(tmp_path):
    (tmp_path / "LSMDC16_annos_val.csv").write_text(LSMDC_TEST[0] + "\n" + "clip\tonly three\tfields\n")
    with pytest.raises(DataError, match=r"LSMDC16_annos_val.csv:2: 3 tab-separated fields; expected 6"):
        LSMDC(str(tmp_path), None, tmp_path).load_split("val")


# --- ActivityNet ----------------------------------------------------------------------------------

def test_activitynet_paragraphs_from_val_1_with_v_prefixed_ids(tmp_path, stand_in):
    ids = ["v_uqiMw7tQ1Cc", "v_bXdq2zI1Ms0", "v_FsS_NCZEfaI"]
    (tmp_path / "val_ids.json").write_text(json.dumps(ids + [ids[0]]))  # a duplicate id counts once
    (tmp_path / "val_1.json").write_text(json.dumps({
        ids[0]: {"duration": 55.15, "timestamps": [[0.28, 55.15], [13.79, 54.32]],
                 "sentences": ["A weight lifting tutorial is given.", "  The coach helps the guy."]},
        ids[1]: {"duration": 73.1, "timestamps": [[0, 10]], "sentences": ["Three men are standing on a mat."]},
        ids[2]: {"duration": 20.0, "timestamps": [[0, 5], [5, 9], [9, 20]], "sentences": ["a", "b", "c"]},
        "v_notlisted": {"duration": 1.0, "timestamps": [[0, 1]], "sentences": ["ignored"]},
    }))
    (tmp_path / "videos").mkdir()
    link_videos(stand_in, tmp_path / "videos", ["uqiMw7tQ1Cc.mp4", "bXdq2zI1Ms0.mkv", "v_FsS_NCZEfaI.webm"])
    split = ActivityNet(str(tmp_path), None, tmp_path).load_split("val_1")
    assert split.shape == "paragraph" and [v.id for v in split.videos] == ids
    assert split.caption_video == [0, 1, 2] and len(split.captions) == 3
    assert split.captions[0] == "A weight lifting tutorial is given.   The coach helps the guy."
    assert split.captions[2] == "a b c"
    assert [v.path.name for v in split.videos] == ["uqiMw7tQ1Cc.mp4", "bXdq2zI1Ms0.mkv", "v_FsS_NCZEfaI.webm"]
    assert check_videos(split, allow_partial=False).coverage == "3/3"
    assert ActivityNet.protocol_defaults == {"frames": 64, "words": 64}


def test_activitynet_ids_without_prefix_are_refused(tmp_path):
    (tmp_path / "train_ids.json").write_text(json.dumps(["uqiMw7tQ1Cc"]))
    (tmp_path / "train.json").write_text(json.dumps({}))
    with pytest.raises(DataError, match=r"train_ids.json: 1 id\(s\) without the v_ prefix"):
        ActivityNet(str(tmp_path), None, tmp_path).load_split("train")


# --- VATEX ----------------------------------------------------------------------------------------

def test_vatex_multi_caption_ten_captions_each(tmp_path, stand_in):
    ids = ["Ptf_2VRj-V0_000122_000132", "--33Lscn6sk_000004_000014", "-0Rl2E-Ckp0_000010_000020"]
    write_lines(tmp_path / "train_list.txt", ids[:1])
    write_lines(tmp_path / "test_list.txt", ids[1:])
    (tmp_path / "ref_captions.json").write_text(json.dumps({v: [f"caption {k} of {v}" for k in range(10)]
                                                            for v in ids}))
    (tmp_path / "videos").mkdir()
    link_videos(stand_in, tmp_path / "videos", [f"{v}.mp4" for v in ids])
    test = VATEX(str(tmp_path), None, tmp_path).load_split("test")
    assert test.shape == "multi-caption" and len(test.videos) == 2 and len(test.captions) == 20
    assert test.caption_video == [0] * 10 + [1] * 10 and test.captions[10] == f"caption 0 of {ids[2]}"
    assert test.captions_per_video().tolist() == [10, 10]
    assert len(VATEX(str(tmp_path), None, tmp_path).load_split("train").captions) == 10
