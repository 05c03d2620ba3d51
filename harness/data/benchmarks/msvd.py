"""MSVD: 1,200 / 100 / 670 videos (train / val / test lists), multi-caption, videos <id>.avi.

Captions come in the two formats in use: `raw-captions.pkl` (id -> list of token lists, the
CLIP4Clip/DiCoSA file; tokens joined with spaces) or `captions_msvd.json` (id -> list of strings, the
X-Pool file). When both are present the pickle is read; the file used is in the fingerprints.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from harness.data.benchmark import Benchmark, Split, Video, first_existing, grouped_split, read_json, read_lines
from harness.errors import DataError

RAW_CAPTIONS = "raw-captions.pkl"
JSON_CAPTIONS = "captions_msvd.json"


class PlainDataUnpickler(pickle.Unpickler):
    """raw-captions.pkl holds only dicts, lists and strings: any class or function in the stream (what a
    hostile pickle uses to run code) is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"it refers to {module}.{name}; only dicts, lists and strings are accepted")


class MSVD(Benchmark):
    """MSVD: train / val / test lists, ~41 captions per video (multi-caption)."""

    name = "msvd"
    splits = ("train", "val", "test")
    layout = (
        "  {train,val,test}_list.txt   one video id a line\n"
        "  raw-captions.pkl            {id: [[token, ...], ...]}  (or captions_msvd.json: {id: [caption, ...]})\n"
        "  videos/<id>.avi             (or the folder given as benchmark.videos)"
    )

    def _video(self, video_id: str) -> Video:
        return Video(video_id, first_existing(self.video_dir, [f"{video_id}.avi", f"{video_id}.mp4"]))

    def _captions(self) -> tuple[dict[str, list[str]], Path]:
        if (self.root / RAW_CAPTIONS).is_file():
            (path,) = self.require(RAW_CAPTIONS)
            try:
                with path.open("rb") as handle:
                    data = PlainDataUnpickler(handle).load()
            except Exception as error:  # unpickling raises many kinds
                raise DataError(f"{path}: cannot be read as a pickle of plain data ({error}).") from None
            if not isinstance(data, dict):
                raise DataError(f"{path}: holds a {type(data).__name__}; expected {{id: [[token, ...], ...]}}.")
            return self._sentences(data, path), path
        if not (self.root / JSON_CAPTIONS).is_file():
            raise DataError(f"msvd: neither {self.root / RAW_CAPTIONS} nor {self.root / JSON_CAPTIONS} exists; "
                            f"one of them holds the captions. Expected layout:\n{self.layout}")
        (path,) = self.require(JSON_CAPTIONS)
        return self._sentences(read_json(path, dict, "{id: [caption, ...]}"), path), path

    @staticmethod
    def _sentences(data: dict, path: Path) -> dict[str, list[str]]:
        """id -> caption strings; a caption given as a token list (raw-captions.pkl) is joined with spaces."""
        sentences = {}
        for vid, captions in data.items():
            if not isinstance(captions, list):
                raise DataError(f"{path}: the captions of video {vid!r} are {captions!r:.200}; expected a list of "
                                "strings (or of token lists).")
            sentences[vid] = [MSVD._sentence(c, path, vid) for c in captions]
        return sentences

    def load_split(self, split: str) -> Split:
        (ids_file,) = self.require(f"{split}_list.txt")
        captions, source = self._captions()
        return grouped_split(split, "multi-caption", read_lines(ids_file), captions, self._video, source)

    @staticmethod
    def _sentence(caption, path: Path, video_id: str) -> str:
        if isinstance(caption, str):
            return caption
        if isinstance(caption, (list, tuple)) and all(isinstance(t, str) for t in caption):
            return " ".join(caption)  # raw-captions.pkl: a caption is a list of tokens
        raise DataError(f"{path}: a caption of video {video_id!r} is {caption!r:.200}; expected a string or a token list.")
