"""Cost accounting: MACs per stage counted by two counters (flops, model), wall-clock time (timing), the
suite-level report (report)."""
