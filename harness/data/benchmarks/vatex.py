"""VATEX (English): 25,991 training videos, the 1,500-video HGR test split, 10 captions each."""

from __future__ import annotations

from harness.data.benchmark import Benchmark, Split, Video, grouped_split, read_json, read_lines

CAPTIONS = "ref_captions.json"


class VATEX(Benchmark):
    """VATEX: train / test lists, 10 English captions per video (multi-caption)."""

    name = "vatex"
    splits = ("train", "test")
    layout = (
        "  train_list.txt, test_list.txt   one video id a line\n"
        "  ref_captions.json               {id: [caption, ...]}\n"
        "  videos/<id>.mp4                 (or the folder given as benchmark.videos)"
    )

    def _video(self, video_id: str) -> Video:
        return Video(video_id, self.video_dir / f"{video_id}.mp4")

    def load_split(self, split: str) -> Split:
        ids_file, captions_file = self.require(f"{split}_list.txt", CAPTIONS)
        captions = read_json(captions_file, dict, "{id: [caption, ...]}")
        return grouped_split(split, "multi-caption", read_lines(ids_file), captions, self._video, captions_file)
