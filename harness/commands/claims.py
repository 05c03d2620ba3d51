"""`harness claims [RUN_DIR]`: every published cost claim (harness/report/claims.csv) beside the ratio the harness
counts and measures for the same stage, and a verdict (docs/cost.md section 7)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_SUITE = "suites/msrvtt.yaml"


def cost_source(cost: str | None, suite: str, timing: bool, log=print) -> dict:
    """The cost record: the file given, else counted (and timed) on the spot from the suite's shapes with
    random weights (no data, no training; minutes at ViT-B/32)."""
    from harness.report.claims import read_cost_record

    if cost is not None:
        return read_cost_record(cost)
    from harness.cost.suite import suite_cost
    from harness.pipeline.preflight import select_device
    from harness.suite import load_suite

    loaded = load_suite(suite)
    log(f"counting every method of {suite} (random weights of its shapes{', with timing' if timing else ''}) ...")
    return suite_cost(loaded, select_device(loaded.device), timing=timing, log=log)


def named_figures(record: dict, scale: dict | None = None) -> dict:
    """The record's figures, each method named as the papers name it (its registered `reported_as`)."""
    from harness import registry
    from harness.errors import HarnessError
    from harness.report.claims import figures_from_record, read_claims
    from harness.report.reported import read_reported

    registered = registry.methods()
    reported_as = {}
    for name in record["methods"]:
        try:
            reported_as[name] = registered[name].reported_as
        except (KeyError, HarnessError):  # a method of the record that is not installed here: matched by name
            reported_as[name] = None
    names = {name for c in read_claims() for name in (c.numerator, c.denominator)} | set(read_reported()["method"])
    return figures_from_record(record, reported_as, sorted(names), scale)


def _claims(args: argparse.Namespace) -> None:
    from harness.report.claims import (DEFAULT_FACTOR, check_claims, check_factor, check_same_protocol,
                                       claims_context, read_claims, read_cost_record, render_claims, run_accuracy)
    from harness.report.leaderboard import load_run
    from harness.report.reported import backbone_name, head_flops, read_reported
    from harness.storage.files import atomic_write

    # every input checked before the count, which takes minutes without --cost
    claims, factor = read_claims(), check_factor(DEFAULT_FACTOR if args.factor is None else args.factor)
    run = load_run(args.run) if args.run else None
    scale = read_cost_record(args.scale, "--scale") if args.scale else None
    record = cost_source(args.cost, args.suite, not args.no_timing)
    if scale is not None:
        check_same_protocol(record, scale)
    figures = named_figures(record, scale)
    accuracy, label = run_accuracy(run.results) if run is not None else ({}, "")
    if run is not None:
        label += f", run {run.name}"
    checks = check_claims(claims, figures, factor, accuracy)
    context = claims_context(checks, figures, record, factor, label, published_r1(
        read_reported(), backbone_name(record["protocol"].get("arch", ""))), head_flops(), scale)
    text = render_claims(context)
    if args.output:
        atomic_write(Path(args.output), text, "claims table")
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    for check in checks:
        print(f"{check.claim.id}: {check.verdict.text}")


def published_r1(reported, backbone: str) -> dict[str, float]:
    """{paper name: published t2v R@1} on MSR-VTT 1k-A at `backbone`, without post-processing."""
    rows = reported[(reported["dataset"] == "msrvtt-1kA") & (reported["backbone"] == backbone)
                    & (reported["direction"] == "t2v") & (reported["post"] == "none") & reported["R1"].notna()]
    return dict(zip(rows["method"], rows["R1"].astype(float)))


def add(commands) -> None:
    claims = commands.add_parser("claims", help="the published cost claims (220x, 50x, Table I's head FLOPs) "
                                                "against the harness's counted and measured ratios")
    claims.add_argument("run", nargs="?", metavar="RUN_DIR",
                        help="a run directory: its accuracy beside the claims that name accuracy")
    claims.add_argument("--cost", metavar="COST_JSON", help="a `harness cost --output` record (default: count "
                                                            "the suite's methods now, with random weights)")
    claims.add_argument("--suite", default=DEFAULT_SUITE,
                        help=f"suite whose shapes are counted when no --cost is given (default {DEFAULT_SUITE})")
    claims.add_argument("--scale", metavar="COST_JSON", help="a `harness cost --gallery ... --output` record of the "
                                                             "same protocol: measured ratios at 10^4..10^6 videos")
    claims.add_argument("--no-timing", action="store_true", help="without --cost: count only, do not time")
    claims.add_argument("--factor", type=float, help="a claim holds when the harness's ratio is within this factor "
                                                     "of it, either way (default 2: claims.DEFAULT_FACTOR)")
    claims.add_argument("--output", metavar="FILE.md", help="write the Markdown table here (default: print it)")
    claims.set_defaults(handler=_claims)
