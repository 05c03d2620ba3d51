"""The post-processed rows of an evaluation (docs/protocol.md section 4): DSL and QB-Norm applied to a method's
first-stage score matrix of each direction, streaming (harness/retrieval/postprocess.py holds the formulas).

Each post-processing needs a first pass before its rows can be ranked: DSL the per-column normalisers over every
test query of the direction, QB-Norm its query bank (one caption per training video for t2v, the training videos
for v2t, encoded by the method and scored against the test gallery). In a process group each rank does its share
of the blocks and the partial states are merged exactly.

What a score means decides the scale: DSL's softmax is over logits (temperature 1 on a score that includes the
logit scale, the trained logit scale on a similarity, or the method's fixed `dsl_temperature`); QB-Norm's
exponent beta is over similarities (a logits score is divided by the logit scale first).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from torch import Tensor

from harness import distributed
from harness.api.method import Features, Method
from harness.data.benchmark import Split
from harness.data.frames import FrameStore
from harness.errors import HarnessError
from harness.retrieval import postprocess
from harness.retrieval.encoding import encode_split
from harness.retrieval.features import count
from harness.retrieval.tiles import Scoring, ScoreFn, query_blocks

NAMES = ("dsl", "qbnorm")
# docs/protocol.md section 4: k 1, theta 3 (t2v) / 5 (v2t), beta 70, 50 on ActivityNet
QBNORM_DEFAULTS = {"t2v": {"k": 1, "beta": 70.0, "theta": 3}, "v2t": {"k": 1, "beta": 70.0, "theta": 5}}
QBNORM_BETA = {"activitynet": 50.0}
Transform = Callable[[Tensor], Tensor]  # a query block (float32) -> its post-processed float64 block


@dataclass
class DirectionPass:
    """One direction of one split's evaluation, as a post-processing reads it."""

    method: Method
    score_fn: ScoreFn  # the first stage's: `score`, or a two-stage method's `coarse_score`
    direction: str
    text: Features
    video: Features
    scoring: Scoring
    blocks: Callable[[], Iterator[tuple[int, Tensor]]]  # this process's query blocks, computed anew each call
    bank: tuple[Features | None, Features | None] | None = None  # the bank's (videos, queries), QB-Norm only


def logit_scale(method: Method) -> float:
    return float(method.backbone.logit_scale.detach().exp())


def merged(state, merge):
    """A partial state (this process's blocks) merged with every other process's."""
    return functools.reduce(merge, distributed.gather_objects(state))


def declared_score_kind(method: Method, post: str) -> str:
    if method.score_kind not in ("logits", "similarity"):
        raise HarnessError(f"{method.name}: a {post} row needs to know what its score is (Method.score_kind: "
                           f"'logits' or 'similarity'); it declares {method.score_kind!r}.")
    return method.score_kind


@dataclass(frozen=True)
class PostProcessing:
    name: str

    def bank_features(self, method: Method, store: FrameStore, words: int, batch_size: int, scoring: Scoring,
                      directions: tuple[str, ...], quiet: bool, cache) -> tuple[Features | None, Features | None] | None:
        """What the first pass needs encoded besides the split (QB-Norm: its query bank)."""
        return None

    def prepare(self, run: DirectionPass) -> tuple[Transform, dict]:
        """The first pass: the transform of each query block, and the settings it used (recorded in the rows)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Dsl(PostProcessing):
    """DSL, the inverted softmax over every test query of the direction."""

    name: str = "dsl"

    def prepare(self, run: DirectionPass) -> tuple[Transform, dict]:
        method = run.method
        kind = declared_score_kind(method, self.name)
        temperature = method.dsl_temperature or (1.0 if kind == "logits" else logit_scale(method))
        gallery = count(run.video if run.direction == "t2v" else run.text)
        columns = postprocess.dsl_columns(gallery, temperature)
        for _, block in run.blocks():
            columns = postprocess.add_rows(columns, block, "DSL")
        normaliser = postprocess.finish_dsl(merged(columns, postprocess.merge_column_logsumexp))
        return (lambda block: postprocess.dsl_block(normaliser, block)), {"temperature": temperature}


@dataclass(frozen=True)
class QbNorm(PostProcessing):
    """QB-Norm with the official query bank: the first caption of each `bank` video (t2v), those videos (v2t)."""

    name: str = "qbnorm"
    bank: Split | None = None
    benchmark: str = ""

    def bank_features(self, method: Method, store: FrameStore, words: int, batch_size: int, scoring: Scoring,
                      directions: tuple[str, ...], quiet: bool, cache) -> tuple[Features | None, Features | None]:
        return encode_split(method, self.bank, store, words, batch_size, scoring, quiet, cache,
                            videos="v2t" in directions, queries="t2v" in directions)

    def settings(self, method: Method, direction: str) -> dict:
        official = getattr(method, "qbnorm_settings", {}).get(self.benchmark, {}).get(direction)
        return dict(official or {**QBNORM_DEFAULTS[direction],
                                 "beta": QBNORM_BETA.get(self.benchmark, QBNORM_DEFAULTS[direction]["beta"])})

    def prepare(self, run: DirectionPass) -> tuple[Transform, dict]:
        method, direction = run.method, run.direction
        kind = declared_score_kind(method, self.name)
        settings = self.settings(method, direction)
        beta = settings["beta"] / (logit_scale(method) if kind == "logits" else 1.0)  # the exponent over similarities
        bank_video, bank_text = run.bank
        text, video = (bank_text, run.video) if direction == "t2v" else (run.text, bank_video)
        gallery = count(run.video if direction == "t2v" else run.text)
        bank = postprocess.empty_query_bank(gallery, k=settings["k"], beta=beta, theta=settings["theta"])
        chunk = run.scoring.chunk
        for q0, block in query_blocks(run.score_fn, text, video, direction, run.scoring,
                                      lambda start: (start // chunk) % distributed.world_size() == distributed.rank()):
            bank = postprocess.add_bank_block(bank, block)
        bank = merged(bank, postprocess.merge_query_banks)
        return (lambda block: postprocess.qbnorm_block(bank, block)), {
            **settings, "bank": self.bank.name, "bank_queries": bank.bank_queries, "active_items": int(bank.active.sum())}


def method_post_names(method_cls: type, suite_post: list[str]) -> tuple[list[str], dict[str, str]]:
    """The post-processed rows a method gets: the suite's `evaluation.post` and the method's official ones (each
    once), and those skipped with the reason (a score of no declared kind)."""
    names = list(dict.fromkeys([*suite_post, *method_cls.post_processing]))
    if method_cls.score_kind in ("logits", "similarity"):
        return names, {}
    return [], {name: f"{method_cls.name} declares no score kind (Method.score_kind): its score is neither a "
                      "similarity nor one times the logit scale" for name in names}


def post_processings(names: list[str], bank: Split | None, benchmark: str) -> tuple[PostProcessing, ...]:
    """The post-processings `names` (each once, in order); QB-Norm's bank: one caption per video of `bank`."""
    chosen = []
    for name in dict.fromkeys(names):
        if name == "dsl":
            chosen.append(Dsl())
        elif name == "qbnorm":
            if bank is None:
                raise HarnessError("qbnorm: its query bank is one caption per training video, and the suite gives no "
                                   "training split (benchmark.train_split).")
            chosen.append(QbNorm(bank=bank.subset(f"{bank.name} (one caption per video)", list(range(len(bank.videos))),
                                                  first_caption_only=True), benchmark=benchmark))
        else:
            raise HarnessError(f"unknown post-processing {name!r}; known: {', '.join(NAMES)}.")
    return tuple(chosen)
