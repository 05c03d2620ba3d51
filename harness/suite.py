"""Suite YAML -> a validated, typed Suite.

The shared protocol (frames, words, sampling, training budget, metric convention) is set once per
suite; a method entry may override only that method's own hyper-parameters. Every error names the file,
the key path, what was given and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.errors import HarnessError, SuiteError
from harness.retrieval.index import IndexSpec
from harness.api.method import Method

Sampling = Literal["fps1-linspace", "uniform"]
TrainSampling = Literal["fps1-linspace", "uniform", "rand"]
Direction = Literal["t2v", "v2t"]


@dataclass
class BackboneSpec:
    # open_clip architecture name (e.g. ViT-B-32), or "synthetic-small" for the built-in small CLIP.
    arch: str = "ViT-B-32"
    # Local checkpoint: OpenAI's ViT-B-32.pt archive, an OpenAI-layout state dict, or an open_clip file.
    checkpoint: str | None = None
    quick_gelu: bool = True  # OpenAI CLIP weights were trained with QuickGELU


@dataclass
class BenchmarkSpec:
    name: str  # a registered benchmark (harness list): msrvtt, msvd, didemo, lsmdc, activitynet, vatex, synthetic
    root: str | None = None  # annotation folder; the benchmark says what it expects there
    videos: str | None = None  # video folder; default <root>/videos
    train_split: str | None = None  # the split methods train on (and QB-Norm's query bank comes from)
    # Checkpoint selection on this split (one with its own validation videos, e.g. MSVD's val); without
    # it, training.validation_videos are carved from the training videos (MSR-VTT has no validation split).
    validation_split: str | None = None
    test_splits: list[str] = field(default_factory=list)  # the splits evaluated (at least one)
    # Evaluate on the videos present when some are missing or unreadable (each row records its coverage)
    allow_partial_gallery: bool = False
    # Seconds one video may take to decode; a video that makes the decoder hang is reported as unreadable.
    decode_timeout: float = 120.0
    # A smoke test: only the first `limit` videos of each split (with their captions). Its rows say so and are
    # never gated or compared with published numbers (`harness run --limit N` sets it).
    limit: int | None = None


@dataclass
class ProtocolSpec:
    frames: int = 12  # frames per video (padded videos carry a frame mask)
    words: int = 32  # tokens per caption: [SOT] + words + [EOT], zero-padded
    # one frame per second, then linspace to `frames` (CLIP4Clip); or the middle of `frames` equal spans (X-Pool)
    sampling: Sampling = "fps1-linspace"
    train_sampling: TrainSampling | None = None  # default: same as sampling
    image_size: int | None = None  # default: the backbone's input size
    # v2t on multi-caption benchmarks: the field's convention ranks each video against caption groups
    # (max over each video's captions); "all-captions" ranks against every caption.
    multi_caption_v2t: Literal["max-over-captions", "all-captions"] = "max-over-captions"


@dataclass
class TrainingSpec:
    epochs: int = 5  # passes over the training samples
    # What an epoch samples: "every-pair", each (training video, caption) pair once (CLIP4Clip's
    # --expand_msrvtt_sentences, the MSR-VTT recipes); "one-caption-per-video", each training video once with
    # one of its captions drawn at random (CLIP4Clip's loader without that flag).
    samples: Literal["every-pair", "one-caption-per-video"] = "every-pair"
    batch_size: int = 128  # the global batch, whatever the number of processes (it must divide by it)
    lr: float = 1e-4  # new modules
    coef_lr: float = 1e-3  # backbone lr = lr * coef_lr
    weight_decay: float = 0.2  # decoupled (AdamW); none on biases and norms
    warmup_proportion: float = 0.1  # linear warm-up over this fraction of the steps, then cosine
    grad_clip: float = 1.0  # the gradient norm clipped to this
    max_logit_scale: float = 100.0  # the logit scale clamped to at most this after every step
    validation_videos: int = 500  # carved deterministically from the training videos
    # the checkpoint evaluated: the epoch of best validation R@1, or the last one
    selection: Literal["validation", "last-epoch"] = "validation"
    mixed_precision: bool = True  # used only on CUDA
    # "tensorboard": an event file per method under the run directory (tensorboard/<method>/): every loss term
    # per step and per epoch, the learning rates, validation R@1, the logit scale (pip install .[tensorboard])
    log: Literal["none", "tensorboard"] = "none"


@dataclass
class EvaluationSpec:
    directions: list[Direction] = field(default_factory=lambda: ["t2v", "v2t"])  # text-to-video, video-to-text
    batch_size: int = 64  # videos or queries encoded at once
    score_chunk: int = 1024  # queries x gallery items scored at once (per side)
    # Search the gallery of inner-product methods with a FAISS index: "exact" (IndexFlatIP, the engine's
    # ranks) or an approximate one, "ivf" (nlist, nprobe, depth) or "hnsw" (M, ef_construction, ef_search,
    # depth), whose rows are labelled approximate and carry the index's recall. "none": the engine scores.
    index: Literal["none", "exact", "ivf", "hnsw"] = "none"
    index_params: dict[str, int] = field(default_factory=dict)  # the index's parameters (see evaluation.index)
    # Post-processed rows beside the plain ones, for every method (a method's official ones are added anyway):
    # "dsl" (inverted softmax over the test queries) and "qbnorm" (its bank: one caption per training video).
    post: list[Literal["dsl", "qbnorm"]] = field(default_factory=list)

    def index_spec(self) -> IndexSpec | None:
        return None if self.index == "none" else IndexSpec(self.index, dict(self.index_params))


@dataclass
class MethodSpec:
    name: str  # a registered method (harness list), or distribution:name where two distributions register it
    # the method's own hyper-parameters over its official (per-benchmark) defaults
    params: dict[str, Any] = field(default_factory=dict)
    # Evaluate this checkpoint instead of training: saved by the method's official code ("official") or
    # by the harness (a run's checkpoints/<method>.pt, or `harness import-checkpoint` output).
    checkpoint: str | None = None
    checkpoint_format: Literal["official", "harness"] = "official"  # what wrote `checkpoint`

    def trains(self, method_cls: type) -> bool:
        """Whether this entry trains its method (a trainable method with no checkpoint given)."""
        return method_cls.trainable and self.checkpoint is None


@dataclass
class Suite:
    name: str  # names the runs folder: runs/<name>/<run-id>
    benchmark: BenchmarkSpec
    methods: list[MethodSpec]
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    protocol: ProtocolSpec = field(default_factory=ProtocolSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    seed: int = 42  # every random choice: data order, head initialisation, the synthetic benchmark and backbone
    # generated data, decoded frames, encoded features, pre-trained backbones (harness cache info)
    cache_dir: str = "${HARNESS_CACHE:-~/.cache/tvr-harness}"
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    # Methods trained and evaluated at once on the CPU, each in a worker process with one torch thread (their
    # numbers then hold for any core count); 1: one after the other, in the run's own process (its threads).
    jobs: int = 1
    source: str = "<memory>"  # the file it was read from (not a YAML key)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Range:
    """The values a numeric suite key admits (always finite): at least `low` (more than it when `open_low`), at
    most `high`."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    why: str = ""

    def admits(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.open_low else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.open_low else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"<= {self.high:g}")
        return " ".join(["a finite value", " and ".join(parts)]).strip() + (f" ({self.why})" if self.why else "")


# Checked when the suite is read (file and --set alike), so that a value out of range never reaches the work.
RANGES: dict[tuple[type, str], Range] = {
    (BenchmarkSpec, "decode_timeout"): Range(0, open_low=True, why="seconds"),
    (BenchmarkSpec, "limit"): Range(1, why="videos per split"),
    (ProtocolSpec, "frames"): Range(1),
    (ProtocolSpec, "words"): Range(3, why="the start and end tokens and at least one word"),
    (ProtocolSpec, "image_size"): Range(1, why="pixels"),
    (TrainingSpec, "epochs"): Range(1),
    (TrainingSpec, "batch_size"): Range(1),
    (TrainingSpec, "lr"): Range(0, open_low=True),
    (TrainingSpec, "coef_lr"): Range(0, why="0 freezes the backbone"),
    (TrainingSpec, "weight_decay"): Range(0),
    (TrainingSpec, "warmup_proportion"): Range(0, 1, why="a fraction of the steps"),
    (TrainingSpec, "grad_clip"): Range(0, why="0 clips nothing"),
    (TrainingSpec, "max_logit_scale"): Range(0, open_low=True),
    (TrainingSpec, "validation_videos"): Range(0),
    (EvaluationSpec, "batch_size"): Range(1),
    (EvaluationSpec, "score_chunk"): Range(1),
    (Suite, "seed"): Range(0),
    (Suite, "jobs"): Range(1, why="worker processes"),
}


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, where: str) -> str:
    """Replace ${VAR} and ${VAR:-default}; an unset variable without default is an error."""

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
        if default is not None:
            return default
        raise SuiteError(
            f"{where}: environment variable ${{{name}}} is not set and has no default. "
            f"Set it (export {name}=...) or write ${{{name}:-default}} in the suite."
        )

    return _VAR.sub(replace, text)


def _suggest(given: str, allowed: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(given, list(allowed), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def convert(value: Any, tp: Any, path: str, source: str) -> Any:
    """Convert YAML data to the annotated type, or raise a SuiteError naming the key path."""
    where = f"{source}: {path or '<top>'}"
    origin = typing.get_origin(tp)
    if isinstance(value, str):
        value = interpolate(value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return convert(value, arg, path, source)
            except SuiteError as error:
                errors.append(error)
        if len(errors) == 1:
            raise errors[0]
        raise SuiteError(f"{where}: got {value!r}; expected {_type_name(tp)}.")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise SuiteError(
                f"{where}: got {value!r}; allowed: {', '.join(repr(a) for a in allowed)}."
                + (_suggest(value, allowed) if isinstance(value, str) else "")
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SuiteError(f"{where}: got {value!r}; expected {_type_name(tp)}.")
        (item_type,) = typing.get_args(tp)
        return [convert(item, item_type, f"{path}[{i}]", source) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SuiteError(f"{where}: got {value!r}; expected a mapping.")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path, source)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads 1e-4 as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise SuiteError(f"{where}: got {value!r} ({type(value).__name__}); expected {_type_name(tp)}.")
    return value


def build(cls: type, data: Any, path: str, source: str, skip: tuple[str, ...] = ("source",)) -> Any:
    """Build dataclass `cls` from a mapping: unknown keys, missing keys and wrong types are errors."""
    where = f"{source}: {path or '<top>'}"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SuiteError(f"{where}: got {data!r}; expected a mapping with keys {_keys(cls, skip)}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    for key in data:
        if key not in names:
            raise SuiteError(
                f"{source}: {_join(path, str(key))}: unknown key {key!r}. "
                f"Allowed here: {', '.join(names)}.{_suggest(str(key), names)}"
            )
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.name in data:
            values[f.name] = convert(data[f.name], hints[f.name], _join(path, f.name), source)
            check_range(cls, f.name, values[f.name], _join(path, f.name), source)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SuiteError(f"{source}: {_join(path, f.name)}: required key is missing ({_type_name(hints[f.name])}).")
        elif isinstance(f.default, str):
            values[f.name] = interpolate(f.default, f"{source}: {_join(path, f.name)}")
    return cls(**values)


def check_range(cls: type, name: str, value: Any, path: str, source: str) -> None:
    """A numeric value against its key's range (RANGES); floats must be finite wherever they appear."""
    allowed = RANGES.get((cls, name))
    if allowed is None and isinstance(value, float) and not math.isfinite(value):
        allowed = Range()
    if allowed is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and not allowed.admits(value):
        raise SuiteError(f"{source}: {path}: got {value!r}; allowed: {allowed}.")


def _keys(cls: type, skip: tuple[str, ...]) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls) if f.name not in skip)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def parse_suite(data: Any, source: str) -> Suite:
    """Validate suite data read from `source`, including method, benchmark and split names."""
    from harness import registry

    suite = build(Suite, data, "", source)
    suite.source = source
    benchmarks = registry.benchmarks()
    if suite.benchmark.name not in benchmarks:
        raise SuiteError(
            f"{source}: benchmark.name: unknown benchmark {suite.benchmark.name!r}. "
            f"Allowed: {', '.join(sorted(benchmarks))}.{_suggest(suite.benchmark.name, benchmarks)}"
        )
    try:
        benchmark_cls = benchmarks[suite.benchmark.name]
    except HarnessError as error:
        raise SuiteError(f"{source}: benchmark.name: {error}") from None
    given_protocol = (data.get("protocol") or {}) if isinstance(data, dict) else {}
    for key, value in benchmark_cls.protocol_defaults.items():
        if key not in given_protocol:  # the benchmark's protocol value (e.g. 64 frames for DiDeMo)
            setattr(suite.protocol, key, value)
    splits = benchmark_cls.splits
    requested = [("benchmark.train_split", suite.benchmark.train_split),
                 ("benchmark.validation_split", suite.benchmark.validation_split)] + [
        (f"benchmark.test_splits[{i}]", s) for i, s in enumerate(suite.benchmark.test_splits)
    ]
    for key, split in requested:
        if split is not None and split not in splits:
            raise SuiteError(
                f"{source}: {key}: unknown split {split!r} of {suite.benchmark.name}. "
                f"Allowed: {', '.join(splits)}.{_suggest(split, splits)}"
            )
    if not suite.benchmark.test_splits:
        raise SuiteError(f"{source}: benchmark.test_splits: give at least one of {', '.join(splits)}.")
    if not suite.methods:
        raise SuiteError(f"{source}: methods: the suite lists no method.")
    methods = registry.methods()
    seen = set()
    for i, spec in enumerate(suite.methods):
        if spec.name not in methods:
            raise SuiteError(
                f"{source}: methods[{i}].name: unknown method {spec.name!r}. "
                f"Allowed: {', '.join(sorted(methods))}.{_suggest(spec.name, methods)}"
            )
        if spec.name in seen:
            raise SuiteError(f"{source}: methods[{i}].name: method {spec.name!r} is listed twice.")
        seen.add(spec.name)
        try:  # a broken or ambiguous plugin fails here, with its own error
            method_cls = methods[spec.name]
        except HarnessError as error:
            raise SuiteError(f"{source}: methods[{i}].name: {error}") from None
        # Resolve now so that a typo in a hyper-parameter fails before any work starts.
        spec.params = method_params(method_cls, suite, spec.params or {}, f"methods[{i}].params")
    for i, direction in enumerate(suite.evaluation.directions):
        if suite.evaluation.directions.index(direction) != i:
            raise SuiteError(f"{source}: evaluation.directions[{i}]: {direction!r} is listed twice.")
    check_index(suite, methods)
    return suite


def check_index(suite: Suite, methods) -> None:
    """evaluation.index and its parameters; every method of the suite must declare an inner product."""
    evaluation, source = suite.evaluation, suite.source
    if evaluation.index == "none":
        if evaluation.index_params:
            raise SuiteError(f"{source}: evaluation.index_params: given, but evaluation.index is none.")
        return
    try:
        evaluation.index_spec()
    except HarnessError as error:
        raise SuiteError(f"{source}: {error}") from None
    for i, spec in enumerate(suite.methods):
        method_cls = methods[spec.name]
        if method_cls.inner_product is Method.inner_product:
            stage = "coarse_score" if method_cls.candidates is not Method.candidates else "score"
            raise SuiteError(f"{source}: evaluation.index={evaluation.index}: methods[{i}] {spec.name} declares no "
                             f"inner product (Method.inner_product) for its {stage}, so no index can search its "
                             "gallery; evaluate it in a suite with evaluation.index: none.")


def method_params(method_cls: type, suite: Suite, given: dict, path: str) -> dict:
    """A method's resolved hyper-parameters: its official per-benchmark values first, the suite's own
    params over them; a `frames` or `words` param left unset takes the suite's protocol value."""
    params = {**method_cls.benchmark_defaults.get(suite.benchmark.name, {}), **given}
    resolved = dataclasses.asdict(build(method_cls.Params, params, path, suite.source))
    for name, value in (("frames", suite.protocol.frames), ("words", suite.protocol.words)):
        if name in resolved and resolved[name] is None:
            resolved[name] = value
    return resolved


def apply_overrides(data: Any, overrides: list[str], source: str) -> Any:
    """`--set KEY=VALUE` on the suite's YAML data: KEY a dotted path (`training.epochs`,
    `methods.glscl.params.alpha`: a method is addressed by name), VALUE read as YAML (`1`, `0.2`,
    `[test-1kA]`, `true`). Intermediate mappings are created; what the value means is validated afterwards
    exactly as if it were written in the file."""
    if not isinstance(data, dict):
        return data  # parse_suite names the problem
    for item in overrides:
        key, sep, text = item.partition("=")
        where = f"{source}: --set {item}"
        if not sep or not key or any(not part for part in key.split(".")):
            raise SuiteError(f"{where}: expected KEY=VALUE with a dotted KEY, e.g. training.epochs=1.")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise SuiteError(f"{where}: the value is not valid YAML ({error}).") from None
        parts, node = key.split("."), data
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):  # the methods list: an entry is addressed by its name
                names = [m.get("name") if isinstance(m, dict) else None for m in node]
                if part not in names:
                    raise SuiteError(f"{where}: the suite lists no method {part!r}; listed: "
                                     f"{', '.join(str(n) for n in names)}.")
                node = node[names.index(part)]
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            else:
                raise SuiteError(f"{where}: {'.'.join(parts[:depth])} is {node!r}, not a mapping.")
        if not isinstance(node, dict):
            raise SuiteError(f"{where}: {'.'.join(parts[:-1])} is {node!r:.80}, not a mapping"
                             + (" (address a method by name: methods.NAME.params.KEY)." if isinstance(node, list) else "."))
        node[parts[-1]] = value
    return data


def select_methods(data: Any, names: list[str], source: str) -> Any:
    """`--methods a,b`: keep only those of the suite's methods, in the suite's order."""
    if not isinstance(data, dict) or not isinstance(data.get("methods"), list):
        return data
    listed = [m.get("name") for m in data["methods"] if isinstance(m, dict)]
    unknown = [n for n in names if n not in listed]
    if unknown:
        raise SuiteError(f"{source}: --methods {','.join(names)}: the suite lists no {', '.join(map(repr, unknown))}; "
                         f"listed: {', '.join(map(str, listed))}.{_suggest(unknown[0], listed)}")
    data["methods"] = [m for m in data["methods"] if isinstance(m, dict) and m.get("name") in names]
    return data


def read_suite_data(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SuiteError(f"{path}: suite file not found.")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise SuiteError(f"{path}: not valid YAML: {error}") from None
    except UnicodeDecodeError as error:
        raise SuiteError(f"{path}: not a text file (byte {error.start} is not UTF-8); a suite is a YAML file.") from None
    except OSError as error:
        raise SuiteError(f"{path}: cannot be read ({error.strerror or error}).") from None


def load_suite(path: str | Path, overrides: list[str] = (), methods: list[str] | None = None) -> Suite:
    """Read and validate a suite YAML file, with command-line overrides (`--set`) and a method selection
    (`--methods`) applied first, so they are validated exactly as the file is."""
    data = apply_overrides(read_suite_data(path), list(overrides), str(path))
    if methods:
        data = select_methods(data, methods, str(path))
    source = f"{path} (with --set {' '.join(overrides)})" if overrides else str(path)
    return parse_suite(data, source)
