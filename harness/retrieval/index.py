"""A FAISS index for the stage of a method whose score is one inner product (`Method.inner_product`).

"exact" (IndexFlatIP) returns every gallery item with its inner product: its ranks are the engine's.
"ivf" and "hnsw" are approximate: each query gets the `depth` items the index returns; an item it does not
return scores -inf (it ranks below every returned item). Their rows are labelled approximate and carry the
index's recall against exact search (`index_recall`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from harness.errors import HarnessError

APPROXIMATE = ("ivf", "hnsw")
DEFAULTS = {"exact": {}, "ivf": {"nlist": 100, "nprobe": 10, "depth": 100},
            "hnsw": {"M": 32, "ef_construction": 40, "ef_search": 64, "depth": 100}}
RECALL_AT = 10  # index_recall: the share of the exact top-10 that the index returns in its top 10


@dataclass
class IndexSpec:
    kind: str  # "exact", "ivf" or "hnsw"
    params: dict[str, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in DEFAULTS:
            raise HarnessError(f"evaluation.index: {self.kind!r} is no index; give one of none, "
                               + ", ".join(DEFAULTS) + ".")
        unknown = sorted(set(self.params) - set(DEFAULTS[self.kind]))
        if unknown:
            raise HarnessError(f"evaluation.index_params: {', '.join(unknown)} is not a parameter of the "
                               f"{self.kind} index (its parameters: {', '.join(DEFAULTS[self.kind]) or 'none'}).")
        bad = [f"{k}={v!r}" for k, v in self.params.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
        if bad:
            raise HarnessError(f"evaluation.index_params: {', '.join(bad)}; each must be a whole number >= 1.")
        self.params = {**DEFAULTS[self.kind], **self.params}

    @property
    def approximate(self) -> bool:
        return self.kind in APPROXIMATE


def build(spec: IndexSpec, gallery: Tensor, device: torch.device):
    """An index over the (n, d) gallery vectors; on the GPU where FAISS has GPU support and `device` is one."""
    import faiss

    vectors = np.ascontiguousarray(gallery.float().numpy())
    n, dim = vectors.shape
    p = spec.params
    if spec.kind == "exact":
        index = faiss.IndexFlatIP(dim)
    elif spec.kind == "ivf":
        if p["nlist"] > n:
            raise HarnessError(f"evaluation.index_params: nlist={p['nlist']} lists for a gallery of {n} items; "
                               "give at most as many lists as items.")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, p["nlist"], faiss.METRIC_INNER_PRODUCT)
        index.nprobe = p["nprobe"]
    else:
        index = faiss.IndexHNSWFlat(dim, p["M"], faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction, index.hnsw.efSearch = p["ef_construction"], p["ef_search"]
    if device.type == "cuda" and spec.kind != "hnsw" and hasattr(faiss, "StandardGpuResources"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device.index or 0, index)
    if not index.is_trained:
        index.train(vectors)
    index.add(vectors)
    return index


def depth(spec: IndexSpec, gallery: int) -> int:
    return gallery if spec.kind == "exact" else min(spec.params["depth"], gallery)


def search(index, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
    scores, ids = index.search(np.ascontiguousarray(queries.float().numpy()), k)
    return torch.from_numpy(scores), torch.from_numpy(ids)


def index_blocks(index, queries: Tensor, gallery: int, k: int, chunk: int) -> Iterator[tuple[int, Tensor]]:
    """(start, (chunk, gallery) float32 block): the index's scores of `chunk` queries; -inf where an item
    is not among the `k` it returns."""
    for q0 in range(0, queries.shape[0], chunk):
        scores, ids = search(index, queries[q0 : q0 + chunk], k)
        returned = ids >= 0
        block = torch.full((scores.shape[0], gallery), -torch.inf)
        rows = torch.arange(scores.shape[0]).unsqueeze(1).expand_as(ids)
        block[rows[returned], ids[returned]] = scores[returned]
        yield q0, block


def recall(index, exact, queries: Tensor, chunk: int) -> float:
    """Mean over queries of |index top-10 & exact top-10| / 10."""
    k = min(RECALL_AT, exact.ntotal)
    found = []
    for q0 in range(0, queries.shape[0], chunk):
        _, approximate = search(index, queries[q0 : q0 + chunk], k)
        _, truth = search(exact, queries[q0 : q0 + chunk], k)
        found.append((approximate.unsqueeze(2) == truth.unsqueeze(1)).any(dim=1).sum(dim=1))
    return float(torch.cat(found).double().mean() / k)
