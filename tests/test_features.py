"""The feature cache: a second evaluation of a checkpoint encodes nothing and gives the same scores and rows;
a changed weight, protocol value or video file misses; a corrupt entry is reported and encoded again."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.clip4clip import SeqLSTM
from harness.api.backbone import Backbone, load_clip
from harness.pipeline.checkpoints import load_checkpoint
from harness.data.benchmark import Split, Video
from harness.data.frames import FrameStore
from harness.data.synthetic import write_mp4
from harness.errors import HarnessError
from harness.retrieval.encoding import encode_split
from harness.retrieval.tiles import Scoring, score_in_chunks
from harness.retrieval.metrics import text_to_video, video_to_text
from harness.retrieval.feature_cache import FeatureCache, method_identity, weights_digest
from harness.retrieval.metrics import summarize

IDS = ["clip0", "clip1", "clip2", "clip3"]
WORDS, FRAMES, SIZE = 12, 2, 16  # tiny_clip takes 16 px frames; the clips hold 3 s (3 frames at 1 fps)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for vid in IDS:
        write_mp4(folder / f"{vid}.mp4", rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), fps=2)
    return folder


@pytest.fixture
def split(tmp_path, videos) -> Split:
    """Four videos (copied, so a test may touch them), two captions each."""
    folder = tmp_path / "videos"
    folder.mkdir()
    for vid in IDS:
        (folder / f"{vid}.mp4").write_bytes((videos / f"{vid}.mp4").read_bytes())
    captions = [f"{kind} of {vid}" for vid in IDS for kind in ("a clip", "what happens in the middle")]
    return Split("test", "multi-caption", [Video(vid, folder / f"{vid}.mp4") for vid in IDS], captions,
                 [i // 2 for i in range(len(captions))])


@pytest.fixture
def checkpoint(tmp_path, tiny_clip) -> Path:
    """A seqLSTM checkpoint (head weights of its own besides the backbone's)."""
    torch.manual_seed(1)
    path = tmp_path / "seqlstm.pt"
    torch.save(build(tiny_clip, WORDS).state_dict(), path)
    return path


def build(clip: Path, words: int) -> SeqLSTM:
    return SeqLSTM(Backbone(load_clip("auto", clip, words)), SeqLSTM.Params())


@dataclass
class WithScale:
    scale: float = 1.0


class Calls:
    """Counts the method's encode_video and encode_text calls."""

    def __init__(self, method):
        self.video = self.text = 0
        video, text = method.encode_video, method.encode_text

        def encode_video(*args):
            self.video += 1
            return video(*args)

        def encode_text(*args):
            self.text += 1
            return text(*args)

        method.encode_video, method.encode_text = encode_video, encode_text


def evaluate(clip: Path, checkpoint: Path, split: Split, store: FrameStore, cache: FeatureCache | None,
             change=None):
    """The checkpoint loaded into a fresh method, its features encoded (or read from `cache`) and scored: its
    scores per direction and the calls."""
    method = build(clip, WORDS)
    load_checkpoint(method, checkpoint, "harness")
    if change is not None:
        change(method)
    calls = Calls(method)
    method.eval()
    video, text = encode_split(method, split, store, WORDS, 3, Scoring(CPU), quiet=True, cache=cache)
    scores = score_in_chunks(method, text, video, Scoring(CPU, 5))
    return {"t2v": scores, "v2t": scores}, calls


def rows(scores: dict, split: Split) -> list[dict]:
    owners = torch.as_tensor(split.caption_video)
    return [summarize(text_to_video(scores["t2v"], owners)),
            summarize(video_to_text(scores["v2t"], owners, len(split.videos)))]


def test_a_second_evaluation_of_a_checkpoint_reads_every_feature_from_the_cache(tmp_path, tiny_clip, checkpoint,
                                                                                 split):
    store = FrameStore(tmp_path / "cache", FRAMES, "fps1-linspace", SIZE, quiet=True)
    cache = FeatureCache(tmp_path / "cache")
    uncached, calls = evaluate(tiny_clip, checkpoint, split, store, None)
    assert (calls.video, calls.text) == (2, 3)  # 4 videos and 8 captions in batches of 3
    first, calls = evaluate(tiny_clip, checkpoint, split, store, cache)
    assert (calls.video, calls.text) == (2, 3)
    assert len(list((tmp_path / "cache" / "features").glob("*.npz"))) == 2  # the videos' entry, the captions'
    second, calls = evaluate(tiny_clip, checkpoint, split, store, cache)
    assert (calls.video, calls.text) == (0, 0)
    for direction in ("t2v", "v2t"):
        assert torch.equal(first[direction], uncached[direction])
        assert torch.equal(second[direction], first[direction])
    assert rows(second, split) == rows(first, split)
    # another split of the same videos (e.g. test-1kA beside test-1kA-multi) shares the videos' entry
    one_caption = split.subset("test-first-caption", list(range(len(IDS))), first_caption_only=True)
    _, calls = evaluate(tiny_clip, checkpoint, one_caption, store, cache)
    assert (calls.video, calls.text) == (0, 2)


def add_to_one_head_weight(method: SeqLSTM) -> None:
    with torch.no_grad():
        method.lstm_visual.bias_ih_l0[0] += 1e-3


@pytest.mark.parametrize("what, store_args, change, encoded", [
    ("a weight of the head", (FRAMES, "fps1-linspace"), add_to_one_head_weight, "both"),
    ("protocol.frames", (FRAMES + 1, "fps1-linspace"), None, "video"),
    ("protocol.sampling", (FRAMES, "uniform"), None, "video"),
])
def test_a_changed_weight_or_protocol_value_misses_the_cache(tmp_path, tiny_clip, checkpoint, split, what, store_args,
                                                             change, encoded):
    cache = FeatureCache(tmp_path / "cache")
    store = FrameStore(tmp_path / "cache", FRAMES, "fps1-linspace", SIZE, quiet=True)
    before, _ = evaluate(tiny_clip, checkpoint, split, store, cache)
    changed = FrameStore(tmp_path / "cache", *store_args, SIZE, quiet=True)
    after, calls = evaluate(tiny_clip, checkpoint, split, changed, cache, change=change)
    assert (calls.video > 0, calls.text > 0) == {"both": (True, True), "video": (True, False)}[encoded], what
    assert not torch.equal(after["t2v"], before["t2v"]), what  # the change moves the scores: a hit would be wrong
    _, calls = evaluate(tiny_clip, checkpoint, split, store, cache)  # the first entries are still there
    assert (calls.video, calls.text) == (0, 0)


def test_changed_words_or_captions_miss_the_queries_entry(tmp_path, tiny_clip, split):
    # A harness checkpoint fixes the word count (its text positions), so this is checked on the cache itself.
    cache = FeatureCache(tmp_path / "cache")
    identity = method_identity(build(tiny_clip, WORDS), CPU, False)
    encoded = []

    def encode() -> dict:
        encoded.append(1)
        return {"text": torch.full((len(split.captions), 3), float(len(encoded)))}

    first = cache.queries(identity, split, WORDS, encode)
    assert torch.equal(cache.queries(identity, split, WORDS, encode)["text"], first["text"]) and len(encoded) == 1
    cache.queries(identity, split, WORDS - 2, encode)
    assert len(encoded) == 2
    split.captions[3] = "another caption"
    cache.queries(identity, split, WORDS, encode)
    assert len(encoded) == 3


def test_a_changed_video_file_misses_the_cache(tmp_path, tiny_clip, checkpoint, split):
    cache = FeatureCache(tmp_path / "cache")
    store = FrameStore(tmp_path / "cache", FRAMES, "fps1-linspace", SIZE, quiet=True)
    evaluate(tiny_clip, checkpoint, split, store, cache)
    path = split.videos[2].path
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the frame store's key changes
    _, calls = evaluate(tiny_clip, checkpoint, split, store, cache)
    assert (calls.video, calls.text) == (2, 0)


def test_a_corrupt_entry_is_reported_not_used_and_encoded_again(tmp_path, tiny_clip, checkpoint, split, caplog):
    cache = FeatureCache(tmp_path / "cache")
    store = FrameStore(tmp_path / "cache", FRAMES, "fps1-linspace", SIZE, quiet=True)
    first, _ = evaluate(tiny_clip, checkpoint, split, store, cache)
    (entry,) = (tmp_path / "cache" / "features").glob("*-videos-*.npz")
    damaged = bytearray(entry.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # one flipped byte in the middle of the features
    entry.write_bytes(bytes(damaged))
    again, calls = evaluate(tiny_clip, checkpoint, split, store, cache)
    assert "is corrupt or unreadable" in caplog.text and entry.name in caplog.text
    assert (calls.video, calls.text) == (2, 0)
    assert torch.equal(again["t2v"], first["t2v"])
    assert entry.read_bytes() != bytes(damaged)  # rewritten with good features
    caplog.clear()
    entry.write_bytes(entry.read_bytes()[:100])  # truncated, as by a full disk under another writer
    _, calls = evaluate(tiny_clip, checkpoint, split, store, cache)
    assert "is corrupt or unreadable" in caplog.text and calls.video == 2
    caplog.clear()
    (queries,) = (tmp_path / "cache" / "features").glob("*-queries-*.npz")
    entry.write_bytes(queries.read_bytes())  # a readable entry of another length (8 captions, not 4 videos)
    _, calls = evaluate(tiny_clip, checkpoint, split, store, cache)
    assert "holds [8] rows per feature, 4 expected" in caplog.text and calls.video == 2


def test_the_key_holds_the_weights_names_and_dtypes_the_device_type_and_autocast(tiny_clip):
    class Buffers(torch.nn.Module):
        def __init__(self, a: torch.Tensor, b: torch.Tensor):
            super().__init__()
            self.register_buffer("a", a)
            self.register_buffer("b", b)

    x, y = torch.arange(4, dtype=torch.float32), torch.ones(4)
    digests = {weights_digest(Buffers(x, y)), weights_digest(Buffers(y, x)),  # names swapped
               weights_digest(Buffers(x.view(torch.int32), y))}  # the same bytes, another dtype
    assert len(digests) == 3 and weights_digest(Buffers(x, y)) == weights_digest(Buffers(x.clone(), y.clone()))
    method = build(tiny_clip, WORDS)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # no GPU needed: only the device type is read
    assert method_identity(method, cuda, True) != method_identity(method, cuda, False)
    assert method_identity(method, cuda, False) != method_identity(method, cpu, False)
    assert method_identity(method, cpu, True) == method_identity(method, cpu, False)  # autocast is CUDA-only
    method.params = WithScale(scale=1.0)  # the resolved params are part of the key too
    before = method_identity(method, cpu, False)
    method.params = WithScale(scale=2.0)
    assert method_identity(method, cpu, False) != before


def test_a_cache_that_cannot_be_written_is_reported_and_the_evaluation_goes_on(tmp_path, tiny_clip, checkpoint, split,
                                                                                caplog, monkeypatch):
    store = FrameStore(tmp_path / "cache", FRAMES, "fps1-linspace", SIZE, quiet=True)
    uncached, _ = evaluate(tiny_clip, checkpoint, split, store, None)

    def full_disk(path, save, what):
        raise HarnessError(f"cannot write {what} {path}: No space left on device (nothing was written).")

    monkeypatch.setattr("harness.retrieval.feature_cache.atomic_save", full_disk)
    scores, calls = evaluate(tiny_clip, checkpoint, split, store, FeatureCache(tmp_path / "cache"))
    assert "No space left on device" in caplog.text and "used but not cached" in caplog.text
    assert torch.equal(scores["t2v"], uncached["t2v"]) and (calls.video, calls.text) == (2, 3)


def test_editing_a_methods_source_changes_its_feature_key(tmp_path, monkeypatch):
    """The key holds the code that computes the features: an edited encoder never reads old features."""
    import importlib

    from harness.retrieval.feature_cache import code_digest

    package = tmp_path / "edited_method"
    package.mkdir()
    (package / "__init__.py").write_text("class Head:\n    scale = 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = code_digest(importlib.import_module("edited_method").Head)
    (package / "__init__.py").write_text("class Head:\n    scale = 2.0\n")
    assert code_digest(importlib.import_module("edited_method").Head) != before


def ranks_agree_worker(rank: int, port: int, folder: str) -> None:
    """One rank of a group in which only rank 0 finds the cache entry (another run writing it right then)."""
    import harness.retrieval.feature_cache
    from harness import distributed

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    distributed.init_from_environment()
    try:
        cache = FeatureCache(folder)
        key = {"inputs": "queries", "name": "probe"}
        file = cache._file(key)
        if rank == 0:
            np.savez(file, **{f"{harness.retrieval.feature_cache.ARRAY_PREFIX}text": np.zeros((3, 2), dtype=np.float32)})
        distributed.wait_for_all()
        if rank == 1:
            cache._read = lambda file, rows: None  # this rank does not see the entry

        def encode():  # collective, as the engine's encoding is
            parts = distributed.gather_objects(torch.full((3, 2), float(rank + 1)))
            return {"text": parts[0]}

        features = cache._read_or_encode(key, 3, encode)
        torch.save(features["text"], os.path.join(folder, f"rank{rank}.pt"))
    finally:
        distributed.shutdown()


def test_ranks_that_disagree_on_a_cache_entry_all_encode_instead_of_waiting_forever(tmp_path):
    import socket
    import time

    import torch.multiprocessing as mp

    (tmp_path / "features").mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    group = mp.start_processes(ranks_agree_worker, args=(port, str(tmp_path)), nprocs=2, join=False,
                               start_method="spawn")
    deadline = time.monotonic() + 120
    while not group.join(timeout=1):
        if time.monotonic() > deadline:
            for process in group.processes:
                process.kill()
            pytest.fail("the ranks waited for each other: a cache hit on one rank and a miss on another deadlocked")
    encoded = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert all(torch.equal(t, torch.ones(3, 2)) for t in encoded)  # both encoded (rank 0's features), none read


def test_two_methods_with_different_encoders_never_read_each_other_s_features(tmp_path, tiny_clip, split):
    """CenterCLIP clusters tokens inside the visual tower and zero-shot CLIP does not: on the same backbone weights,
    split and protocol, each encodes its own entry, and a second evaluation of each reads back its own features,
    equal to what it encodes itself."""
    from baselines.zeroshot import ZeroShot
    from methods.centerclip import CenterCLIP, CenterCLIPParams

    backbone = Backbone(load_clip("auto", tiny_clip, WORDS))
    store = FrameStore(tmp_path / "cache", 4, "fps1-linspace", SIZE, quiet=True)
    store.prepare(split.videos)
    cache = FeatureCache(tmp_path / "cache")
    methods = {"zeroshot": ZeroShot.build(backbone, {}),
               "centerclip": CenterCLIP.build(backbone, vars(CenterCLIPParams(segments=2, cluster_block=0)))}
    encoded, calls = {}, {}
    for name, method in methods.items():
        method.eval()
        calls[name] = Calls(method)
        encoded[name] = encode_split(method, split, store, WORDS, 3, Scoring(CPU), quiet=True, cache=cache)[0]
    assert len(list((tmp_path / "cache" / "features").rglob("*.npz"))) == 4  # videos and queries of each
    assert encoded["zeroshot"].keys() != encoded["centerclip"].keys() or not all(
        torch.equal(encoded["zeroshot"][k], encoded["centerclip"][k]) for k in encoded["zeroshot"])
    for name, method in methods.items():
        encoding_calls = calls[name].video
        again = encode_split(method, split, store, WORDS, 3, Scoring(CPU), quiet=True, cache=cache)[0]
        assert calls[name].video == encoding_calls > 0, name  # read back, not encoded again
        assert again.keys() == encoded[name].keys()
        assert all(torch.equal(again[k], encoded[name][k]) for k in again)
