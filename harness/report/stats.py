"""Uncertainty from the saved per-query ranks: bootstrap confidence intervals and a paired test.

Bootstrap: resample the evaluation units with replacement and recompute each metric; the interval is the
2.5th-97.5th percentile of the resampled values. The unit is the query, except on multi-caption
benchmarks, where a video is resampled with all its captions (captions of one video are not independent).
Paired test: a sign-flip permutation test on per-query differences between two methods evaluated on the
same queries (under the null, which method produced a query's outcome is exchangeable).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RECALL_AT = (1, 5, 10)


def metric_values(ranks: np.ndarray) -> dict[str, np.ndarray]:
    """R@K, MdR and MnR along the last axis of `ranks` (one row per resample)."""
    values = {f"R{k}": 100.0 * (ranks <= k).mean(axis=-1) for k in RECALL_AT}
    values["MdR"] = np.median(ranks, axis=-1)
    values["MnR"] = ranks.mean(axis=-1)
    return values


def group_members(groups: np.ndarray) -> list[np.ndarray]:
    """Query indices of each group, in order of first appearance."""
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(first)
    return [np.flatnonzero(inverse == g) for g in order]


@dataclass
class Interval:
    low: float
    high: float


def bootstrap_intervals(ranks: np.ndarray, groups: np.ndarray | None = None, resamples: int = 1000,
                        level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """Percentile bootstrap intervals of every metric. `groups` (one label per query, e.g. its video)
    makes the resampling unit the group."""
    ranks = np.asarray(ranks, dtype=np.float64)
    rng = np.random.default_rng(seed)
    members = None if groups is None else group_members(np.asarray(groups))
    if members is None or all(len(m) == 1 for m in members):  # one query per unit: all resamples at once
        samples = metric_values(ranks[rng.integers(0, len(ranks), size=(resamples, len(ranks)))])
    else:
        draws = rng.integers(0, len(members), size=(resamples, len(members)))
        resampled = [metric_values(ranks[np.concatenate([members[g] for g in draw])]) for draw in draws]
        samples = {name: np.array([r[name] for r in resampled]) for name in resampled[0]}
    tail = 100 * (1 - level) / 2
    return {name: Interval(*np.percentile(values, [tail, 100 - tail]).tolist()) for name, values in samples.items()}


@dataclass
class PairedTest:
    metric: str
    difference: float  # method minus reference, in the metric's unit
    p_value: float


def paired_permutation_test(ranks: np.ndarray, reference: np.ndarray, metric: str = "R1",
                            permutations: int = 10_000, seed: int = 0) -> PairedTest:
    """Two-sided sign-flip test of metric(ranks) - metric(reference) on the same queries. The metric is a
    mean of per-query values (R@K: hit indicators; MnR: ranks)."""
    ranks, reference = np.asarray(ranks, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if ranks.shape != reference.shape:
        raise ValueError(f"paired test needs the same queries: {ranks.shape} vs {reference.shape}")
    if metric.startswith("R"):
        k = int(metric[1:])
        per_query = 100.0 * ((ranks <= k).astype(float) - (reference <= k).astype(float))
    elif metric == "MnR":
        per_query = ranks - reference
    else:
        raise ValueError(f"no paired test for {metric!r} (use R@K or MnR)")
    observed = per_query.mean()
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, permutations, 500):  # blocks keep memory small on 10^4-query splits
        signs = rng.choice((-1.0, 1.0), size=(min(500, permutations - start), len(per_query)))
        extreme += np.count_nonzero(np.abs(signs @ per_query / len(per_query)) >= abs(observed) - 1e-12)
    return PairedTest(metric, float(observed), float((extreme + 1) / (permutations + 1)))
