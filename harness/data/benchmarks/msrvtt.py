"""MSR-VTT in the files' real formats: 9k and 7k training, the 1k-A (JSFusion) test, square.

test-1kA-multi evaluates the same 1,000 videos with all their captions from MSRVTT_data.json
(multi-caption shape).
"""

from __future__ import annotations

from collections import defaultdict

from harness.data.benchmark import Benchmark, Split, Video, grouped_split, read_csv, read_json
from harness.errors import DataError

DATA_JSON = "MSRVTT_data.json"
TRAIN_CSV = {"train-9k": "MSRVTT_train.9k.csv", "train-7k": "MSRVTT_train.7k.csv"}
TEST_CSV = "MSRVTT_JSFUSION_test.csv"


class MSRVTT(Benchmark):
    """MSR-VTT: 9k/7k training, 1k-A test (JSFusion split)."""

    name = "msrvtt"
    splits = ("train-9k", "train-7k", "test-1kA", "test-1kA-multi")
    layout = (
        "  MSRVTT_data.json          {\"videos\": [{video_id, split, ...}], \"sentences\": [{video_id, caption, sen_id}]}\n"
        "  MSRVTT_train.9k.csv       one column video_id (train-9k)\n"
        "  MSRVTT_train.7k.csv       one column video_id (train-7k)\n"
        "  MSRVTT_JSFUSION_test.csv  columns key,vid_key,video_id,sentence (test-1kA)\n"
        "  videos/<video_id>.mp4     (or the folder given as benchmark.videos)"
    )

    def _video(self, video_id: str) -> Video:
        return Video(video_id, self.video_dir / f"{video_id}.mp4")

    def _sentences(self) -> dict[str, list[str]]:
        (path,) = self.require(DATA_JSON)
        data = read_json(path, dict, '{"videos": [...], "sentences": [{video_id, caption, sen_id}]}')
        sentences = data.get("sentences")
        if not isinstance(sentences, list):
            raise DataError(f"{path}: \"sentences\" is {type(sentences).__name__}; expected a list of "
                            "{video_id, caption, sen_id}.")
        by_video: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for index, entry in enumerate(sentences):
            try:
                if not isinstance(entry["video_id"], str) or not isinstance(entry["caption"], str):
                    raise TypeError("video_id and caption must be strings")
                by_video[entry["video_id"]].append((int(entry.get("sen_id", 0)), entry["caption"]))
            except (KeyError, TypeError, ValueError) as error:
                raise DataError(f"{path}: sentences[{index}] is {entry!r:.200} ({type(error).__name__}: {error}); "
                                "expected {video_id: str, caption: str, sen_id: int}.") from None
        return {vid: [c for _, c in sorted(items)] for vid, items in by_video.items()}

    def load_split(self, split: str) -> Split:
        if split in TRAIN_CSV:
            self.require(TRAIN_CSV[split], DATA_JSON)
            ids = [row["video_id"] for row in read_csv(self.root / TRAIN_CSV[split], ("video_id",))]
            return self._with_all_captions(split, ids, "multi-caption")
        (path,) = self.require(TEST_CSV)
        rows = read_csv(path, ("video_id", "sentence"))
        if split == "test-1kA":
            videos = [self._video(row["video_id"]) for row in rows]
            return Split(split, "square", videos, [row["sentence"] for row in rows], list(range(len(rows))))
        return self._with_all_captions(split, [row["video_id"] for row in rows], "multi-caption")

    def _with_all_captions(self, split: str, ids: list[str], shape) -> Split:
        return grouped_split(split, shape, ids, self._sentences(), self._video, self.root / DATA_JSON)
