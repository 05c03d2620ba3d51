"""Peak resident memory of one statement, measured in a child process (Linux only).

The child runs `setup`, resets its resident high-water mark (VmHWM), runs `statement` and reports the
growth of the high-water mark over its resident size just before the statement, plus whatever the
statement's `report` dict holds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

MEASURE = textwrap.dedent("""
    import json

    def status_kib(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])

    with open("/proc/self/clear_refs", "w") as handle:  # reset the high-water mark
        handle.write("5")
    before = status_kib("VmRSS")
    report = {{}}
    {statement}
    report["peak_mib"] = (status_kib("VmHWM") - before) / 1024
    print(json.dumps(report))
""")


def peak_memory_mib(setup: str, statement: str) -> dict:
    """Run `statement` after `setup` in a fresh interpreter; returns its `report` with `peak_mib`."""
    script = setup + MEASURE.format(statement=statement)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def benchmark_scoring(benchmark, setup: str, size: int) -> float:
    """The peak memory of `method.score(text, video)` as `setup` defines them, in a fresh process (MiB), with
    its (size, size) result checked there; with benchmarks enabled, also timed here (one pytest-benchmark round;
    disabled, the scoring runs once, in the child)."""
    if not benchmark.disabled:
        import torch

        namespace: dict = {}
        exec(setup, namespace)
        method, text, video = namespace["method"], namespace["text"], namespace["video"]

        def score():
            with torch.no_grad():
                return method.score(text, video)

        scores = benchmark.pedantic(score, rounds=1, iterations=1)
        assert scores.shape == (size, size) and torch.isfinite(scores).all()
    def measured() -> dict:
        return peak_memory_mib(setup, "with torch.no_grad():\n        scores = method.score(text, video)\n"
                                      "report['shape'] = list(scores.shape)\n"
                                      "report['finite'] = bool(torch.isfinite(scores).all())")

    # disabled, pedantic runs the measurement once, untimed
    report = benchmark.pedantic(measured, rounds=1, iterations=1) if benchmark.disabled else measured()
    assert report["shape"] == [size, size] and report["finite"]
    benchmark.extra_info["peak_scoring_memory_mib"] = round(report["peak_mib"], 1)
    return report["peak_mib"]
