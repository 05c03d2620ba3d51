"""`harness check-method`: a registered method tested against the method contract on random inputs."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.api.conformance import Finding
    from harness.suite import Suite


def check_registered(name: str, suite: Suite | None = None) -> list[Finding]:
    """check_method on a registered method: at a suite's shapes, architecture (random weights) and params
    for the method (its entry, or its defaults on the suite's benchmark), or on the default small shapes."""
    from harness import registry
    from harness.api.conformance import check_method

    methods = registry.methods()
    if name not in methods:
        raise HarnessError(f"check-method: unknown method {name!r}. Registered: {', '.join(sorted(methods))}.")
    method_cls = methods[name]
    if suite is None:
        return check_method(method_cls)
    from harness.cost.suite import shape_backbone
    from harness.suite import method_params

    given = {spec.name: spec.params for spec in suite.methods}
    params = given[name] if name in given else method_params(method_cls, suite, {}, f"{name} params")
    backbone = shape_backbone(suite)
    return check_method(method_cls, backbone, params, suite.protocol.frames, suite.protocol.words,
                        suite.protocol.image_size or backbone.image_size)


def _check_method(args: argparse.Namespace) -> int:
    from harness.api.conformance import failures
    from harness.suite import load_suite

    findings = check_registered(args.name, load_suite(args.suite) if args.suite else None)
    for finding in findings:
        print(finding)
    broken = failures(findings)
    print(f"{args.name}: {len(findings) - len(broken)} checks passed, {len(broken)} failed")
    return 1 if broken else 0


def add(commands) -> None:
    conformance = commands.add_parser("check-method", help="test a registered method against the method contract on "
                                                           "random inputs; exit 1 if a rule fails")
    conformance.add_argument("name", help="registered method name (or distribution:name)")
    conformance.add_argument("--suite", help="take the shapes, backbone architecture (random weights) and params from "
                                             "this suite (default: a small random CLIP, 8 frames, 32 words)")
    conformance.set_defaults(handler=_check_method)
