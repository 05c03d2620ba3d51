"""`harness cost SUITE`: every method's cost under the suite's protocol, beside the reported figures.

Cost depends on shapes, not values: the backbone is built with the suite's architecture and random
weights, and the inputs are random pixels and tokens of the protocol's sizes. No data, no checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import open_clip
import pandas as pd
import torch

from harness import registry
from harness.api.backbone import Backbone, build_clip, read_state_dict, shape_from_state_dict
from harness.cost.model import GALLERIES, MATRIX_1KA, method_cost
from harness.cost.scale import measure_scale, scale_record
from harness.cost.timing import time_method
from harness.errors import DataError
from harness.report.reported import head_flops
from harness.pipeline.results import code_version, environment
from harness.suite import Suite
from harness.data.synthetic_backbone import SYNTHETIC_ARCH, small_shape

def shape_backbone(suite: Suite) -> Backbone:
    """The suite's backbone architecture with random weights (counting needs shapes only)."""
    spec, words = suite.backbone, suite.protocol.words
    torch.manual_seed(0)
    if spec.arch == SYNTHETIC_ARCH:
        return Backbone(build_clip(small_shape(), words, spec.quick_gelu))
    if spec.arch == "auto":
        if spec.checkpoint is None or not Path(spec.checkpoint).is_file():
            raise DataError(f"{suite.source}: backbone.arch 'auto' takes its shapes from the checkpoint, which is not "
                            "there; name the open_clip architecture (e.g. ViT-B-32) to count without it.")
        return Backbone(build_clip(shape_from_state_dict(read_state_dict(spec.checkpoint)), words, spec.quick_gelu))
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded: that is the point
    try:
        clip = open_clip.create_model(spec.arch, pretrained=None, force_context_length=words,
                                      force_quick_gelu=spec.quick_gelu, precision="fp32")
    finally:
        logging.disable(logging.NOTSET)
    return Backbone(clip)


def suite_cost(suite: Suite, device: torch.device, timing: bool = True, log=print, galleries: list[int] = (),
               time_limit: float = 120.0, scratch: Path | None = None, earlier: dict | None = None,
               on_method=None) -> dict:
    """Every method of the suite counted (and timed), and with `galleries` its online cost measured at those
    gallery sizes (harness/cost/scale.py; `scratch`: where a gallery too large for memory is streamed from).
    `earlier`: a record this function wrote before, unfinished; its
    methods are kept when it was measured with the same settings (`same_settings`). `on_method(record)` is
    called after every method with the record so far, whose `pending` lists the methods still to measure
    (a measurement to 10^6 videos takes hours: what is done is written as it is done)."""
    protocol = suite.protocol
    backbone = shape_backbone(suite)
    size = protocol.image_size or backbone.image_size
    reported = head_flops()
    record = {"protocol": {"frames": protocol.frames, "words": protocol.words, "image_size": size,
                           "arch": suite.backbone.arch, "weights": "random (cost depends on shapes only)",
                           "unit": "MACs (1 per multiply-add); FLOPs = 2 x MACs",
                           "similarity_matrix": f"{MATRIX_1KA} x {MATRIX_1KA} score stage (GLSCL Table I reading)",
                           "galleries": [MATRIX_1KA, *GALLERIES]},
              "settings": {"timing": timing, "scale_galleries": list(galleries), "time_limit_s": time_limit,
                           "scratch": str(scratch) if scratch is not None else None, "code_version": code_version()},
              "environment": environment(device), "methods": {},
              "pending": [spec.name for spec in suite.methods]}
    kept = earlier["methods"] if earlier is not None and same_settings(earlier, record) else {}
    methods = record["methods"]
    for spec in suite.methods:
        if spec.name in kept and kept[spec.name].get("params") == spec.params:
            log(f"{spec.name}: kept from the earlier, unfinished measurement")
            methods[spec.name] = kept[spec.name]
            record["pending"].remove(spec.name)
            continue
        cls = registry.methods()[spec.name]
        method = cls.build(backbone, spec.params)
        log(f"counting {spec.name} ...")
        cost = method_cost(method, protocol.frames, protocol.words, size)
        entry = cost.to_dict(gallery=MATRIX_1KA)
        entry["reported_head_flops_g"] = reported.get(cls.reported_as) if cls.reported_as else None
        entry["params"] = spec.params
        if timing:
            times = time_method(method, protocol.frames, protocol.words, size, device, cost.score.per_pair)
            entry["timing"] = {stage: asdict(t) for stage, t in times.items()}
        if galleries:
            log(f"measuring {spec.name} against galleries of {', '.join(f'{g:,}' for g in galleries)} videos ...")
            points = measure_scale(method, protocol.frames, protocol.words, size, list(galleries),
                                   suite.evaluation.score_chunk, {g: cost.online(g) for g in galleries}, time_limit,
                                   scratch=scratch)
            entry["scale"] = scale_record(points)
        methods[spec.name] = entry
        record["pending"].remove(spec.name)
        if on_method is not None:
            on_method(record)
    return record


def unfinished_record(path: Path) -> dict | None:
    """The record at `path` when an earlier `harness cost --output path` stopped before its last method (its
    finished methods are kept if the settings match); None when there is none. A file that is not a cost
    record is an error: it is not overwritten."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"--output {path}: exists and is not a readable cost record ({error}); give another "
                        "path or remove it.") from None
    if not isinstance(record, dict) or not isinstance(record.get("methods"), dict):
        raise DataError(f"--output {path}: exists and is not a `harness cost` record; give another path or remove it.")
    return record if record.get("pending") else None


def same_settings(earlier: dict, record: dict) -> bool:
    """Whether an earlier record was measured as this one is: protocol, settings (code version included),
    device, torch threads and package versions."""
    keys = ("device", "device_name", "torch_threads", "packages")
    return (earlier.get("protocol") == record["protocol"] and earlier.get("settings") == record["settings"]
            and all(earlier.get("environment", {}).get(k) == record["environment"][k] for k in keys))


def cost_table(cost: dict, baseline: str = "clip4clip-meanp") -> str:
    rows = []
    base = cost["methods"].get(baseline, {}).get("timing")
    for name, record in cost["methods"].items():
        row = {"method": name, "video GMAC": record["per_video"] / 1e9, "query GMAC": record["per_query"] / 1e9,
               "pair MMAC": record["score"]["per_pair"] / 1e6,
               "1k-A matrix GMAC": record["similarity_matrix_1kA"] / 1e9,
               "reported head G": record["reported_head_flops_g"]}
        for n, macs in record["online_per_query"].items():
            row[f"query vs {int(n):.0e} GMAC"] = macs / 1e9
        if record.get("timing") and base:
            for stage in ("per_video", "per_query", "per_pair"):
                row[f"{stage} time x meanP"] = record["timing"][stage]["median_s"] / base[stage]["median_s"]
        rows.append(row)
    return pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4g}")
