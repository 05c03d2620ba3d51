"""ActivityNet Captions: paragraph shape (all sentences of a video joined), val_1 as the test split.

Ids carry a `v_` prefix in the annotation files. The official loader finds the video file under the id
without the prefix; a file named with the prefix is found too (.mp4, .mkv or .webm).
"""

from __future__ import annotations

from harness.data.benchmark import Benchmark, Split, Video, first_existing, paragraph_split, read_json
from harness.errors import DataError

FILES = {"train": ("train_ids.json", "train.json"), "val_1": ("val_ids.json", "val_1.json")}
EXTENSIONS = ("mp4", "mkv", "webm")


class ActivityNet(Benchmark):
    """ActivityNet Captions: 10,009 training videos, val_1 (4,917) as test, paragraph-to-video."""

    name = "activitynet"
    splits = ("train", "val_1")
    protocol_defaults = {"frames": 64, "words": 64}
    layout = (
        "  train_ids.json, val_ids.json   [\"v_<id>\", ...]\n"
        "  train.json, val_1.json         {\"v_<id>\": {\"duration\": s, \"timestamps\": [[s, e], ...], \"sentences\": [...]}}\n"
        "  videos/<id>.mp4                (id without v_; v_<id>.mp4, .mkv and .webm are found too)"
    )

    def _video(self, video_id: str) -> Video:
        bare = video_id[2:]
        names = [f"{stem}.{ext}" for stem in (bare, video_id) for ext in EXTENSIONS]
        return Video(video_id, first_existing(self.video_dir, names))

    def load_split(self, split: str) -> Split:
        ids_file, captions_file = self.require(*FILES[split])
        ids = list(dict.fromkeys(read_json(ids_file, list, '["v_<id>", ...]')))  # duplicates once, in order
        wrong = [v for v in ids if not (isinstance(v, str) and v.startswith("v_"))]
        if wrong:
            raise DataError(f"{ids_file}: {len(wrong)} id(s) without the v_ prefix, e.g. {wrong[0]!r}.")
        data = read_json(captions_file, dict, '{"v_<id>": {"duration", "timestamps", "sentences"}}')
        try:
            sentences = {vid: list(entry["sentences"]) for vid, entry in data.items()}
        except (KeyError, TypeError):
            raise DataError(f"{captions_file}: every entry needs a 'sentences' list.") from None
        return paragraph_split(split, ids, sentences, self._video, captions_file)
