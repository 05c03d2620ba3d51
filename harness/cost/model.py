"""The cost model (docs/cost.md section 4): MACs of each stage of a method, from its interface alone.

- offline, per video: encode_video on one video;
- online, per query: encode_text on one caption;
- score: counted on 1 and 2 texts x 1 and 2 videos, which separates what `score` spends per pair from
  what it spends once per text or once per video inside the call (X-Pool projects every video's frames
  there, for example): C(a, b) = fixed + a per_text + b per_video + a b per_pair;
- two-stage methods: the same for `coarse_score` (every pair) and for `score` (k candidates per query).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor

from harness.cost.flops import FLOP_COUNTER, FVCORE, count_macs
from harness.api.method import Features, Method

GALLERIES = (10**4, 10**5, 10**6)
MATRIX_1KA = 1000  # the 1k-A similarity matrix: 1,000 captions x 1,000 videos


@dataclass
class ScoreCost:
    """MACs of a score function split by how often each part is paid."""

    per_pair: float
    per_text: float
    per_video: float
    fixed: float

    def matrix(self, texts: int, videos: int) -> float:
        return self.fixed + texts * self.per_text + videos * self.per_video + texts * videos * self.per_pair


@dataclass
class MethodCost:
    method: str
    counter: str
    check_counter: str
    per_video: float  # encode_video, offline
    per_query: float  # encode_text, online
    score: ScoreCost  # the fine score for two-stage methods
    coarse: ScoreCost | None = None
    candidates: int | None = None
    check: dict | None = None  # the same figures by the second counter

    def online(self, gallery: int, query: str = "text") -> float:
        """One query against a gallery of `gallery` items: the query's encoding (a caption for t2v, a video
        for v2t), then every pair it meets (the score's per-item part too: a single query pays it for every
        item it scores); two-stage: the coarse score on all, the fine score on the k candidates."""
        def pairs(score: ScoreCost, items: int) -> float:
            return score.matrix(1, items) if query == "text" else score.matrix(items, 1)

        encode = self.per_query if query == "text" else self.per_video
        if self.coarse is None:
            return encode + pairs(self.score, gallery)
        return encode + pairs(self.coarse, gallery) + pairs(self.score, min(self.candidates, gallery))

    def similarity_matrix(self, size: int = MATRIX_1KA) -> float:
        """The score stage of a size x size retrieval (GLSCL's Table I "head FLOPs", docs/cost.md section 4)."""
        if self.coarse is None:
            return self.score.matrix(size, size)
        k = min(self.candidates, size)
        fine_per_query = self.score.per_text + k * (self.score.per_video + self.score.per_pair) + self.score.fixed
        return self.coarse.matrix(size, size) + size * fine_per_query

    @classmethod
    def from_dict(cls, record: dict) -> MethodCost:
        """The inverse of to_dict (derived figures such as timing are ignored)."""
        values = {f.name: record[f.name] for f in fields(cls) if f.name in record}
        values["score"] = ScoreCost(**record["score"])
        values["coarse"] = ScoreCost(**record["coarse"]) if record.get("coarse") else None
        return cls(**values)

    def to_dict(self, gallery: int) -> dict:
        record = asdict(self)
        record["online_per_query"] = {str(n): self.online(n) for n in (gallery, *GALLERIES)}
        record["similarity_matrix_1kA"] = self.similarity_matrix()
        return record


def flatten(text: Features, video: Features) -> tuple[list[str], list[str], tuple[Tensor, ...]]:
    return list(text), list(video), (*text.values(), *video.values())


def score_cost(method: Method, score_fn, text: Features, video: Features, what: str) -> tuple[ScoreCost, ScoreCost]:
    """Both counters' split of `score_fn`, from its cost on 1 and 2 texts x 1 and 2 videos."""
    counts = {}
    for a in (1, 2):
        for b in (1, 2):
            t = {k: v[:a] for k, v in text.items()}
            v = {k: x[:b] for k, x in video.items()}
            text_names, video_names, tensors = flatten(t, v)

            def call(*inputs, text_names=text_names, video_names=video_names):
                split = len(text_names)
                return score_fn(dict(zip(text_names, inputs[:split])), dict(zip(video_names, inputs[split:])))

            counts[a, b] = count_macs(call, tensors, method, f"{method.name} {what} on {a} x {b}")
    splits = []
    for field in ("macs", "check_macs"):
        c = {key: getattr(count, field) for key, count in counts.items()}
        pair = c[2, 2] - c[2, 1] - c[1, 2] + c[1, 1]
        per_text, per_video = c[2, 1] - c[1, 1] - pair, c[1, 2] - c[1, 1] - pair
        fixed = c[1, 1] - per_text - per_video - pair
        # fvcore floors the halved count of an element-wise einsum, so a split can come out a few hundred
        # MACs below zero where the true part is zero: such parts are reported as zero.
        splits.append(ScoreCost(pair, *(max(0.0, part) for part in (per_text, per_video, fixed))))
    return splits[0], splits[1]


def dummy_inputs(frames: int, words: int, image_size: int, count: int = 2) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random pixels of `count` full-length videos and `count` full-length captions (cost does not depend
    on the values; every frame and word is real, the most a protocol pays)."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(count, frames, 3, image_size, image_size, generator=generator)
    frame_mask = torch.ones(count, frames, dtype=torch.bool)
    tokens = torch.randint(1, 1000, (count, words), generator=generator)
    tokens[:, 0], tokens[:, -1] = 49406, 49407  # SOT ... EOT: the EOT is the largest id
    return pixels, frame_mask, tokens, torch.ones(count, words, dtype=torch.bool)


def method_cost(method: Method, frames: int, words: int, image_size: int) -> MethodCost:
    method.eval()
    device = next(method.parameters()).device
    pixels, frame_mask, tokens, token_mask = (x.to(device) for x in dummy_inputs(frames, words, image_size))
    video = count_macs(lambda p, m: first(method.encode_video(p, m)), (pixels[:1], frame_mask[:1]), method,
                       f"{method.name} encode_video")
    query = count_macs(lambda t, m: first(method.encode_text(t, m)), (tokens[:1], token_mask[:1]), method,
                       f"{method.name} encode_text")
    with torch.no_grad():
        video_features, text_features = method.encode_video(pixels, frame_mask), method.encode_text(tokens, token_mask)
    score, score_check = score_cost(method, method.score, text_features, video_features, "score")
    coarse = coarse_check = None
    if method.candidates() is not None:
        coarse, coarse_check = score_cost(method, method.coarse_score, text_features, video_features, "coarse_score")
    check = {"per_video": video.check_macs, "per_query": query.check_macs, "score": asdict(score_check),
             "coarse": asdict(coarse_check) if coarse_check else None}
    return MethodCost(method.name, FVCORE, FLOP_COUNTER, video.macs, query.macs, score, coarse, method.candidates(),
                      check)


def first(features: Features) -> Tensor:
    """A traced call must return tensors: the sum of every output keeps all of them in the graph."""
    return sum(value.float().sum() for value in features.values())
