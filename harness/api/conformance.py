"""The method contract, checked on random inputs at given shapes (`harness check-method`).

Each rule is what the engine relies on without looking inside a method:
- interface: `name`, a `Params` dataclass, `protocol()` of strings, the method builds from its defaults;
- output-shapes: features are tensors indexed by item, `score` is a finite float (n_text, n_video) matrix;
- eval-determinism: in eval mode, encoding and scoring twice give the same numbers;
- score-chunk-invariance: scoring in chunks (as the engine does) equals scoring at once;
- frame-mask / word-mask: the content of padded frames / word positions does not change any score,
  unless `protocol()` declares (keys PADDED_FRAMES / PADDED_WORDS) that the method reads them as its
  official code does; then the check confirms that it does;
- two-stage: `coarse_score` and `candidates()` come together; the coarse score is chunk-invariant and the
  fine score of gathered candidates equals the same entries scored at once;
- loss-gradients: `loss` returns a finite scalar `total` whose gradient reaches every head parameter (those
  a method placed inside the backbone's towers included);
- parameter-ownership: every parameter the method added is a head parameter (full learning rate), every
  parameter of the CLIP checkpoint the backbone's (lr x coef_lr);
- cost: fvcore counts every stage without an unknown matrix operator (harness.cost);
- load-official: an official checkpoint loader refuses incomplete and unknown keys;
- benchmark-defaults: per-benchmark official values name Params fields of registered benchmarks.
Every failure names its rule and shows the numbers.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from harness.api.backbone import Backbone, ClipShape, build_clip
from harness.data.text import tokenize, vocabulary_size
from harness.errors import HarnessError
from harness.retrieval.features import stored, take
from harness.retrieval.tiles import Scoring, score_in_chunks
from harness.api.method import PADDED_FRAMES, PADDED_WORDS, Features, Method

# Scores may differ by this much relative to the largest score magnitude (at least 1) and still be equal:
# float32 matrix products of different shapes round differently.
TOLERANCE = 1e-5
CAPTION_WORDS = ("a", "person", "is", "cooking", "red", "car", "on", "the", "road", "dog", "runs", "music")


@dataclass
class Finding:
    rule: str
    passed: bool
    detail: str

    def __str__(self) -> str:
        return f"{'ok  ' if self.passed else 'FAIL'} {self.rule}: {self.detail}"


@dataclass
class Inputs:
    """Random inputs as the engine gives them: padded frames are zero pixels, padded word ids zero. One
    caption more than videos, so that a transposed score matrix shows."""

    pixels: Tensor  # (videos, T, 3, S, S)
    frame_mask: Tensor  # (videos, T) bool: video 0 full, the others padded
    tokens: Tensor  # (texts, L)
    token_mask: Tensor  # (texts, L) bool


def check_backbone(words: int, image_size: int = 16, seed: int = 0) -> Backbone:
    """A small random OpenAI-layout CLIP (4 text blocks to initialise temporal heads from)."""
    torch.manual_seed(seed)
    shape = ClipShape(embed_dim=64, image_size=image_size, patch_size=8, vision_width=64, vision_layers=1,
                      context_length=words, vocab_size=vocabulary_size(), text_width=64, text_layers=4)
    return Backbone(build_clip(shape, words))


def resolve_params(method_cls: type, given: dict, frames: int, words: int) -> object:
    """The method's Params from its defaults and `given`; `frames`/`words` left unset take the shapes'."""
    values = dataclasses.asdict(method_cls.Params(**given))
    for name, value in (("frames", frames), ("words", words)):
        if name in values and values[name] is None:
            values[name] = value
    return method_cls.Params(**values)


def random_inputs(count: int, frames: int, words: int, image_size: int, seed: int = 0) -> Inputs:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(count, frames, 3, image_size, image_size, generator=generator)
    frame_mask = torch.ones(count, frames, dtype=torch.bool)
    for video in range(1, count):
        frame_mask[video, max(1, frames - video * max(1, frames // 3)):] = False
    pixels = pixels * frame_mask[..., None, None, None]
    lengths = [words] + [2 + 3 * i for i in range(count)]  # the first caption fills every position
    captions = [" ".join(CAPTION_WORDS[int(j)] for j in torch.randint(len(CAPTION_WORDS), (n,), generator=generator))
                for n in lengths]
    tokens, token_mask = tokenize(captions, words)
    return Inputs(pixels, frame_mask, tokens, token_mask)


def largest_difference(a: Tensor, b: Tensor) -> tuple[float, tuple[int, ...]]:
    difference = (a.double() - b.double()).abs()
    flat = int(difference.argmax())
    return float(difference.max()), tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), difference.shape))


def tolerance(reference: Tensor) -> float:
    return TOLERANCE * max(1.0, float(reference.abs().max()))


def compare(rule: str, what: str, expected: Tensor, got: Tensor) -> Finding:
    """Equal within the tolerance, or a failure showing the largest difference and where."""
    if expected.shape != got.shape:
        return Finding(rule, False, f"{what}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    limit = tolerance(expected)
    diff, where = largest_difference(expected, got)
    if diff <= limit:
        return Finding(rule, True, f"{what}: largest difference {diff:.2e} <= {limit:.2e}")
    return Finding(rule, False, f"{what}: differs by {diff:.4g} at (text, video) {where}: {float(expected[where]):.6g} "
                                f"expected, {float(got[where]):.6g} got (tolerance {limit:.2e})")


def feature_problems(features: object, count: int, what: str) -> list[str]:
    if not isinstance(features, dict) or not features:
        return [f"{what} returned {type(features).__name__}, expected a non-empty dict of tensors"]
    problems = []
    for key, value in features.items():
        if not isinstance(value, Tensor):
            problems.append(f"{what}[{key!r}] is {type(value).__name__}, not a tensor")
        elif value.dim() == 0 or value.shape[0] != count:
            problems.append(f"{what}[{key!r}] has shape {tuple(value.shape)}: its first dimension must index the "
                            f"{count} items (the engine slices and concatenates on it)")
        elif value.is_floating_point() and not torch.isfinite(value).all():
            problems.append(f"{what}[{key!r}] has {int((~torch.isfinite(value)).sum())} non-finite values")
    return problems


def score_problems(scores: object, n_text: int, n_video: int, what: str) -> list[str]:
    if not isinstance(scores, Tensor):
        return [f"{what} returned {type(scores).__name__}, expected a tensor"]
    if tuple(scores.shape) != (n_text, n_video):
        return [f"{what} returned shape {tuple(scores.shape)}, expected (n_text, n_video) = ({n_text}, {n_video})"]
    if not scores.is_floating_point():
        return [f"{what} returned dtype {scores.dtype}, expected a floating dtype"]
    if not torch.isfinite(scores).all():
        return [f"{what} returned {int((~torch.isfinite(scores)).sum())} non-finite values"]
    return []


@torch.no_grad()
def evaluate(method: Method, inputs: Inputs, score_fn: Callable | None = None) -> tuple[Features, Features, Tensor]:
    """Encoded and scored as the engine's evaluation does (and its validation): the features kept as the engine
    keeps them (`harness.retrieval.ranking.stored`: float32, masks bool)."""
    text = stored(method.encode_text(inputs.tokens, inputs.token_mask))
    video = stored(method.encode_video(inputs.pixels, inputs.frame_mask))
    return text, video, (score_fn or method.score)(text, video)


def padding_rule(rule: str, method: Method, inputs: Inputs, altered: Inputs, declaration: str, what: str) -> Finding:
    """Scores with other content in the padded positions: equal, or (declared) different."""
    _, _, expected = evaluate(method, inputs)
    _, _, got = evaluate(method, altered)
    declared = method.protocol().get(declaration)
    if declared is None:
        finding = compare(rule, f"scores with random content in the padded {what}", expected, got)
        if not finding.passed:
            finding.detail += (f"; the method reads padded {what}: mask them, or declare the official behaviour in "
                               f"protocol()[{declaration!r}]")
        return finding
    diff, where = largest_difference(expected, got)
    if diff > tolerance(expected):
        return Finding(rule, True, f"declared ({declared}); confirmed: padded {what} change the scores by up to "
                                   f"{diff:.4g}")
    return Finding(rule, False, f"protocol()[{declaration!r}] declares that padded {what} are read ({declared}), "
                                f"but random content in them changes no score (largest difference {diff:.2e}): the "
                                "declaration is stale or the official behaviour is not reproduced")


def check_interface(method_cls: type) -> list[str]:
    problems = []
    if not isinstance(getattr(method_cls, "name", None), str) or not method_cls.name:
        problems.append("class attribute `name` must be a non-empty string")
    params = getattr(method_cls, "Params", None)
    if not (isinstance(params, type) and dataclasses.is_dataclass(params)):
        problems.append("class attribute `Params` must be a dataclass of the method's hyper-parameters")
    if not isinstance(getattr(method_cls, "trainable", None), bool):
        problems.append("class attribute `trainable` must be true or false")
    return problems


def check_benchmark_defaults(method_cls: type) -> Finding:
    from harness import registry

    fields = {f.name for f in dataclasses.fields(method_cls.Params)}
    problems = []
    for benchmark, values in method_cls.benchmark_defaults.items():
        if benchmark not in registry.benchmarks():
            problems.append(f"{benchmark!r} is not a registered benchmark")
        problems += [f"{benchmark}.{key} is not a field of Params" for key in values if key not in fields]
    detail = "; ".join(problems) or f"{len(method_cls.benchmark_defaults)} benchmark(s), every key a Params field"
    return Finding("benchmark-defaults", not problems, detail)


def check_two_stage(method: Method, text: Features, video: Features, scores: Tensor, chunk: int) -> list[Finding]:
    k = method.candidates()
    overrides_coarse = type(method).coarse_score is not Method.coarse_score
    if k is None:
        if overrides_coarse:
            return [Finding("two-stage", False, "coarse_score is defined but candidates() returns None: the engine "
                                                "would never call it; return the candidate count")]
        return []
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        return [Finding("two-stage", False, f"candidates() returned {k!r}; expected a positive integer")]
    if not overrides_coarse:
        return [Finding("two-stage", False, f"candidates() returns {k} but coarse_score is not defined")]
    with torch.no_grad():
        coarse = method.coarse_score(text, video)
    problems = score_problems(coarse, scores.shape[0], scores.shape[1], "coarse_score")
    if problems:
        return [Finding("two-stage", False, "; ".join(problems))]
    findings = [compare("two-stage", f"coarse_score in chunks of {chunk}", coarse,
                        score_in_chunks(method, text, video, Scoring(torch.device("cpu"), chunk), score_fn=method.coarse_score))]
    # The engine scores each query against its gathered candidates, in both directions.
    order = torch.arange(scores.shape[1]).flip(0)
    with torch.no_grad():
        by_text = torch.cat([method.score(take(text, torch.tensor([q])), take(video, order))
                             for q in range(scores.shape[0])])
        texts = torch.arange(scores.shape[0]).flip(0)
        by_video = torch.cat([method.score(take(text, texts), take(video, torch.tensor([v])))
                              for v in range(scores.shape[1])], dim=1)
    findings.append(compare("two-stage", "fine score of gathered candidates (one text x its videos)",
                            scores[:, order], by_text))
    findings.append(compare("two-stage", "fine score of gathered candidates (one video x its texts)",
                            scores[texts], by_video))
    return findings


def check_loss(method: Method, inputs: Inputs) -> Finding:
    if not type(method).trainable:
        return Finding("loss-gradients", True, "not trainable: the engine never calls loss")
    method.train()
    method.zero_grad(set_to_none=True)
    pairs = inputs.pixels.shape[0]  # caption i describes video i
    terms = method.loss(method.encode_text(inputs.tokens[:pairs], inputs.token_mask[:pairs]),
                        method.encode_video(inputs.pixels, inputs.frame_mask))
    method.eval()
    if not isinstance(terms, dict) or "total" not in terms:
        return Finding("loss-gradients", False, f"loss returned {type(terms).__name__} without a 'total' entry")
    total = terms["total"]
    if not isinstance(total, Tensor) or total.numel() != 1:
        return Finding("loss-gradients", False, f"loss['total'] must be a scalar tensor, got {total!r}")
    bad = {name: float(value) for name, value in terms.items()
           if isinstance(value, Tensor) and value.numel() == 1 and not torch.isfinite(value)}
    if bad:
        return Finding("loss-gradients", False, f"non-finite loss terms: {bad}")
    if not total.requires_grad:
        return Finding("loss-gradients", False, f"loss['total'] = {float(total):.6g} carries no gradient")
    total.backward()
    value = float(total.detach())
    names = {id(p): n for n, p in method.named_parameters()}
    head = [p for p in method.head_parameters() if p.requires_grad]
    missing = [names[id(p)] for p in head if p.grad is None]
    zero = [names[id(p)] for p in head if p.grad is not None and not bool(p.grad.any())]
    broken = [names[id(p)] for p in head if p.grad is not None and not torch.isfinite(p.grad).all()]
    if missing or broken:
        return Finding("loss-gradients", False, f"loss['total'] = {value:.6g}; "
                       + (f"no gradient reaches {', '.join(missing)}" if missing else "")
                       + ("; " if missing and broken else "")
                       + (f"non-finite gradient in {', '.join(broken)}" if broken else ""))
    return Finding("loss-gradients", True, f"loss['total'] = {value:.6g}; gradient reaches all {len(head)} head "
                                           "parameters" + (f" (exactly zero for now in {', '.join(zero)}: e.g. behind "
                                                           "a zero-initialised layer)" if zero else ""))


def check_ownership(method: Method, checkpoint_parameters: int) -> Finding:
    """Every parameter the method added (inside the backbone's towers too) is a head parameter, at the full
    learning rate; every parameter of the CLIP checkpoint is the backbone's, at lr x coef_lr."""
    names = {id(p): name for name, p in method.named_parameters()}
    loaded = {id(p) for p in method.backbone.clip_parameters}
    head = {id(p) for p in method.head_parameters()}
    problems = []
    if len(loaded) != checkpoint_parameters:
        problems.append(f"the backbone records {len(loaded)} checkpoint parameters, the CLIP it was built from has "
                        f"{checkpoint_parameters}: the method registered parameters of its own as the backbone's")
    added_not_head = [names[i] for i in names if i not in loaded and i not in head]
    if added_not_head:
        problems.append(f"added by the method but grouped with the backbone (trained at lr x coef_lr): "
                        f"{', '.join(added_not_head[:8])}")
    loaded_in_head = [names[i] for i in names if i in loaded and i in head]
    if loaded_in_head:
        problems.append(f"from the CLIP checkpoint but returned by head_parameters(): {', '.join(loaded_in_head[:8])}")
    if problems:
        return Finding("parameter-ownership", False, "; ".join(problems))
    inside = [names[i] for i in head if names[i].startswith("backbone.")]
    return Finding("parameter-ownership", True, f"{len(head)} head parameters (full lr)"
                   + (f", {len(inside)} of them inside the backbone ({', '.join(inside[:4])})" if inside else "")
                   + f"; {len(loaded)} from the checkpoint (lr x coef_lr)")


def check_cost(method: Method, frames: int, words: int, image_size: int) -> Finding:
    from harness.cost.model import method_cost

    try:
        cost = method_cost(method, frames, words, image_size)
    except HarnessError as error:
        return Finding("cost", False, str(error))
    return Finding("cost", True, f"per video {cost.per_video:.4g}, per query {cost.per_query:.4g}, per pair "
                                 f"{cost.score.per_pair:.4g} MACs (fvcore and FlopCounterMode agree)")


def check_load_official(method: Method) -> Finding:
    if type(method).load_official is Method.load_official:
        return Finding("load-official", True, "no official checkpoint format declared (every file is refused)")
    clip = {f"clip.{key}": value for key, value in method.backbone.clip.state_dict().items()}
    cases = {"an empty state dict": {}, "the backbone's clip.* keys and an unknown key":
             {**clip, "conformance.unknown_key": torch.zeros(1)}}
    for what, state in cases.items():
        try:
            copy.deepcopy(method).load_official(state, "conformance check")
        except HarnessError:
            continue
        except Exception as error:
            return Finding("load-official", False, f"{what}: raised {type(error).__name__} ({error}) instead of a "
                                                   "CheckpointError naming the offending keys")
        return Finding("load-official", False, f"{what} was accepted: the key map must be strict")
    return Finding("load-official", True, "refuses an empty state dict and an unknown key")


def check_method(method_cls: type, backbone: Backbone | None = None, params: dict | None = None, frames: int = 8,
                 words: int = 32, image_size: int | None = None, count: int = 3, chunk: int = 2,
                 seed: int = 0, count_cost: bool = True) -> list[Finding]:
    """Every rule on `count` random videos and `count` + 1 captions at the given shapes; the backbone
    defaults to a small random CLIP (check_backbone). `count_cost=False` leaves out the slowest rule."""
    problems = check_interface(method_cls)
    if problems:
        return [Finding("interface", False, "; ".join(problems))]
    backbone = backbone if backbone is not None else check_backbone(words)
    image_size = image_size or backbone.image_size
    try:
        torch.manual_seed(seed)
        checkpoint_parameters = len(backbone.clip_parameters)
        method = method_cls.build(backbone, dataclasses.asdict(resolve_params(method_cls, params or {}, frames,
                                                                              words))).eval()
        protocol = method.protocol()
    except Exception as error:
        return [Finding("interface", False, f"building {method_cls.__name__} from its Params failed: "
                                            f"{type(error).__name__}: {error}")]
    if not isinstance(protocol, dict) or not all(isinstance(v, str) for v in protocol.values()):
        return [Finding("interface", False, f"protocol() must return a dict of strings, got {protocol!r}")]
    findings = [Finding("interface", True, f"{method_cls.name}: {type(method.params).__name__} "
                                           f"{dataclasses.asdict(method.params)}"), check_benchmark_defaults(method_cls)]

    inputs = random_inputs(count, frames, words, image_size, seed)
    try:
        text, video, scores = evaluate(method, inputs)
    except Exception as error:
        return findings + [Finding("output-shapes", False, f"encoding or scoring raised {type(error).__name__}: {error}")]
    problems = (feature_problems(text, count + 1, "encode_text") + feature_problems(video, count, "encode_video")
                + score_problems(scores, count + 1, count, "score"))
    findings.append(Finding("output-shapes", not problems, "; ".join(problems) or
                            f"{len(text)} text and {len(video)} video feature(s); score {tuple(scores.shape)} "
                            f"{scores.dtype}"))
    if problems:
        return findings
    cpu = torch.device("cpu")
    generator = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(inputs.pixels.shape, generator=generator)
    frames_altered = dataclasses.replace(inputs, pixels=torch.where(inputs.frame_mask[..., None, None, None],
                                                                    inputs.pixels, noise))
    filler = torch.randint(1, int(inputs.tokens.max()), inputs.tokens.shape, generator=generator)
    words_altered = dataclasses.replace(inputs, tokens=torch.where(inputs.token_mask, inputs.tokens, filler))
    rules = [
        ("eval-determinism", lambda: [compare("eval-determinism", "encoding and scoring again", scores,
                                              evaluate(method, inputs)[2])]),
        ("score-chunk-invariance", lambda: [
            compare("score-chunk-invariance", f"score in chunks of {size}", scores,
                    score_in_chunks(method, text, video, Scoring(cpu, size))) for size in (1, chunk)]),
        ("two-stage", lambda: check_two_stage(method, text, video, scores, chunk)),
        ("frame-mask", lambda: [padding_rule("frame-mask", method, inputs, frames_altered, PADDED_FRAMES, "frames")]),
        ("word-mask", lambda: [padding_rule("word-mask", method, inputs, words_altered, PADDED_WORDS,
                                            "word positions")]),
        ("cost", lambda: [check_cost(method, frames, words, image_size)] if count_cost else []),
        ("load-official", lambda: [check_load_official(method)]),
        ("parameter-ownership", lambda: [check_ownership(method, checkpoint_parameters)]),
        ("loss-gradients", lambda: [check_loss(method, inputs)]),
    ]
    for rule, run in rules:
        try:
            findings += run()
        except Exception as error:  # a rule that crashes the method is a failure of that rule, not of the check
            findings.append(Finding(rule, False, f"raised {type(error).__name__}: {error}"))
        method.eval()
    return findings


def failures(findings: list[Finding]) -> list[Finding]:
    return [finding for finding in findings if not finding.passed]
