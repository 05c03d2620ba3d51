"""CenterCLIP's batched k-medoids (KKZ initialisation), one independent problem per row of x (M, N, C).

Distance: the Minkowski distance d_ij = ||x_i - x_j||_p as torch.cdist computes it. For p = 2 with more than
25 rows (cdist's default compute mode) that is the matmul form d_ij = sqrt(max(0, |x_i|^2 + |x_j|^2 -
2 x_i . x_j)), whose diagonal is not exactly 0; the official medoids depend on it, so `pairwise_distance`
reproduces that form operation for operation (bit-equal to torch.cdist, and visible to the cost counters as
one batched matrix product of M N^2 (C + 2) MACs). Otherwise torch.cdist's direct path is used (N <= 25 or
p != 2: M N^2 C subtract-and-accumulate steps that neither counter sees, aten::_cdist_forward having no handle).
Then, per problem, D = d - max(d) - 1 (every entry negative) and D_ii -= 1 (each point is its own nearest).

KKZ: the first medoid is the point of largest L2 norm; each next one is the point farthest (in D) from its
nearest chosen medoid. Iteration, at most `iter_limit` times: assign every point to its nearest medoid;
each cluster's new medoid is the member i with the smallest sum_{j in cluster} D_ij; a problem stops when
sum_k ||x_new_k - x_old_k|| < threshold (in practice: no medoid moved) and keeps its last medoids. After the
loop the medoids are sorted ascending and the points reassigned. Ties go to the first index (torch's
min/max/argmin). Discrete and non-differentiable: run under no_grad in float32, autocast off.

Cost: the distance matrix is the only matrix work (counted in its matmul form). KKZ (K N comparisons per
problem) and the iterations (about 3 N^2 + 3 K N element-wise operations per iteration and problem, where the
official form builds K N^2 products; `iter_limit` iterations at most) are element-wise, no multiply-adds by
either counter's convention; a traced count follows the iterations its input took.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# torch.cdist's default compute mode uses the matmul form for p = 2 when a side has more than 25 rows.
CDIST_MATMUL_ROWS = 25


@dataclass
class Medoids:
    """The result for M problems of N points: medoid ids (M, K) ascending, the KKZ start (M, K), each point's
    cluster (M, N) (an index into ids) and how many iterations moved each problem's medoids (M,)."""

    ids: Tensor
    initial_ids: Tensor
    assignment: Tensor
    updates: Tensor


def pairwise_distance(x: Tensor, p: float = 2.0) -> Tensor:
    """x (M, N, C) -> (M, N, N) distances exactly as torch.cdist(x, x, p) with its default compute mode."""
    if p != 2.0 or x.shape[1] <= CDIST_MATMUL_ROWS:
        return torch.cdist(x, x, p=p)
    squares = x.pow(2).sum(-1, keepdim=True)
    ones = torch.ones_like(squares)
    left = torch.cat([x.mul(-2), squares, ones], dim=-1)
    right = torch.cat([x, ones, squares], dim=-1)
    return left.matmul(right.mT).clamp_min_(0).sqrt_()


def shifted_distance(x: Tensor, p: float) -> Tensor:
    """D = d - max(d) - 1 per problem, then D_ii -= 1: every entry negative, each point its own nearest."""
    distance = pairwise_distance(x, p)
    distance = distance - distance.amax(dim=(1, 2), keepdim=True) - 1.0
    return distance - torch.eye(x.shape[1], dtype=x.dtype, device=x.device)


def kkz_init(x: Tensor, distance: Tensor, k: int) -> Tensor:
    """KKZ: the largest-norm point, then farthest-first traversal in `distance`: (M, K) ids."""
    rows = torch.arange(x.shape[0], device=x.device)
    ids = [x.norm(dim=-1).max(dim=1).indices]
    nearest = distance[rows, ids[0]]  # (M, N): each point's distance to its nearest chosen medoid
    for _ in range(1, k):
        ids.append(nearest.max(dim=1).indices)
        nearest = torch.minimum(nearest, distance[rows, ids[-1]])
    return torch.stack(ids, dim=1)


def assign(distance: Tensor, ids: Tensor) -> Tensor:
    """Each point's nearest medoid (M, N), as an index into ids (first on ties)."""
    rows = torch.arange(distance.shape[0], device=distance.device)[:, None]
    return distance[rows, ids].min(dim=1).indices


def update_medoids(distance: Tensor, assignment: Tensor, k: int) -> Tensor:
    """Each cluster's member with the smallest sum of (negative) distances to its cluster: (M, K) ids. A
    non-member's sum is 0, so the argmin over all points falls on a member. The official code sums a (M, K, N, N)
    masked copy of D; summing each point's own cluster once (M, N, N) gives the same sums."""
    same_cluster = assignment[:, :, None] == assignment[:, None, :]
    within = (distance * same_cluster).sum(dim=-1)  # (M, N): sum over i's own cluster
    member = assignment[:, None, :] == torch.arange(k, device=distance.device)[None, :, None]  # (M, K, N)
    return (within[:, None, :] * member).argmin(dim=-1)


def kmedoids(x: Tensor, k: int, iter_limit: int = 100, threshold: float = 1e-6, p: float = 2.0) -> Medoids:
    """CenterCLIP's k-medoids of each row of x (M, N, C) into k medoids (module docstring)."""
    if not 1 <= k <= x.shape[1]:
        raise ValueError(f"k-medoids: {k} medoids of {x.shape[1]} points")
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        x = x.detach().float()
        distance = shifted_distance(x, p)
        rows = torch.arange(x.shape[0], device=x.device)[:, None]
        initial = ids = kkz_init(x, distance, k)
        active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        updates = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        for _ in range(iter_limit):
            candidate = update_medoids(distance, assign(distance, ids), k)
            shift = (x[rows, candidate] - x[rows, ids]).pow(2).sum(-1).sqrt().sum(-1)
            ids = torch.where(active[:, None], candidate, ids)
            active = active & (shift >= threshold)
            updates += active
            if not bool(active.any()):
                break
        ids = ids.sort(dim=1).values
        return Medoids(ids, initial, assign(distance, ids), updates)
