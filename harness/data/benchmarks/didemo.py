"""DiDeMo: train / val / test lists, paragraph shape (all descriptions of a video joined), 0-31 s.

The list files name videos by file name (e.g. `<id>.mp4`), as CLIP4Clip's loader matches them; a copy
transcoded to .mp4 under the same stem is found too. Every video is decoded over seconds 0-31 only:
the official loader's span (annotations stop at 30 s; longer videos were truncated for annotation).
"""

from __future__ import annotations

from pathlib import Path

from harness.data.benchmark import Benchmark, Split, Video, first_existing, paragraph_split, read_json, read_lines
from harness.errors import DataError

END_SECOND = 31


class DiDeMo(Benchmark):
    """DiDeMo: 8,395 / 1,065 / 1,004 videos, paragraph-to-video (square)."""

    name = "didemo"
    splits = ("train", "val", "test")
    protocol_defaults = {"frames": 64, "words": 64}
    layout = (
        "  {train,val,test}_list.txt   one video file name a line\n"
        "  {train,val,test}_data.json  [{\"video\": name, \"description\": text, \"times\": [[s, e], ...]}, ...]\n"
        "  videos/<name>               (or the folder given as benchmark.videos)"
    )

    def _video(self, name: str) -> Video:
        stem = Path(name).stem
        return Video(name, first_existing(self.video_dir, [name, f"{stem}.mp4"]), end_second=END_SECOND)

    def load_split(self, split: str) -> Split:
        ids_file, data_file = self.require(f"{split}_list.txt", f"{split}_data.json")
        ids = read_lines(ids_file)
        wanted = set(ids)
        sentences: dict[str, list[str]] = {}
        for number, entry in enumerate(read_json(data_file, list, "a list of {video, description, times}")):
            try:
                video, description = entry["video"], entry["description"]
            except (KeyError, TypeError):
                raise DataError(f"{data_file}: entry {number} has no 'video' and 'description': {entry!r}.") from None
            if video in wanted:
                sentences.setdefault(video, []).append(description)
        return paragraph_split(split, ids, sentences, self._video, data_file)
