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
