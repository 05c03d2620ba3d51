"""LSMDC: tab-separated annotation files, 6 fields a line; square test (1,000 clips, one sentence each).

Line format: clip_id, start_aligned, end_aligned, start_extracted, end_extracted, sentence. A clip id
can carry several sentences in the training file: every (clip, sentence) is then a training pair.
Videos follow the nested rule of the official loaders, <videos>/<movie>/<clip_id>.avi with
movie = clip_id.split('.')[0][:-3]; a flat <videos>/<clip_id>.avi is found too.
"""

from __future__ import annotations

from harness.data.benchmark import Benchmark, Split, Video, first_existing, grouped_split
from harness.errors import DataError

FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}


def movie_folder(clip_id: str) -> str:
    """1001_Flight_00.00.37.627-00.00.42.437 -> 1001_Flight"""
    return clip_id.split(".")[0][:-3]


class LSMDC(Benchmark):
    """LSMDC: ~101k training clips, 1,000-clip public test (square)."""

    name = "lsmdc"
    splits = ("train", "val", "test")
    layout = (
        "  LSMDC16_annos_training.csv             tab-separated: clip_id, 4 time stamps, sentence\n"
        "  LSMDC16_annos_val.csv                  same format\n"
        "  LSMDC16_challenge_1000_publictect.csv  same format (test)\n"
        "  videos/<movie>/<clip_id>.avi           movie = clip_id.split('.')[0][:-3]"
    )

    def _video(self, clip_id: str) -> Video:
        names = [f"{movie_folder(clip_id)}/{clip_id}.avi", f"{clip_id}.avi"]
        return Video(clip_id, first_existing(self.video_dir, names))

    def load_split(self, split: str) -> Split:
        (path,) = self.require(FILES[split])
        sentences: dict[str, list[str]] = {}
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.strip().split("\t")
            if len(fields) != 6:
                raise DataError(f"{path}:{number}: {len(fields)} tab-separated fields; expected 6 (clip_id, "
                                f"start_aligned, end_aligned, start_extracted, end_extracted, sentence).")
            sentences.setdefault(fields[0], []).append(fields[5])
        ids = list(sentences)
        shape = "square" if all(len(s) == 1 for s in sentences.values()) else "multi-caption"
        return grouped_split(split, shape, ids, sentences, self._video, path)
