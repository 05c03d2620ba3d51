"""Post-processing of a direction's score matrix (docs/protocol.md section 4), computed block by block.

S (n_queries, n_gallery) is one direction's matrix: t2v texts x videos, v2t videos x texts (every caption).
The engine produces it as blocks of query rows against the whole gallery and never holds it whole; the
functions here take those blocks (float32 as the engine gives them, or float64) and return float64 blocks to
rank. What they keep between blocks is O(gallery).

DSL, the inverted softmax (CAMoE; TS2-Net, CLIP-ViP), over every test query i' of the direction:

    S'[i, j] = S[i, j] * exp(tau S[i, j]) / sum_i' exp(tau S[i', j])

with tau = 1 where S is already logits (TS2-Net), 100 for CLIP-ViP's variant on cosines.
First pass (`dsl_columns`, `add_rows` per block of the direction, `merge_column_logsumexp` across processes,
`finish_dsl`): per gallery column the log-normaliser
L[j] = log sum_i exp(tau S[i, j]), kept as a running maximum m[j] = max_i tau S[i, j] and a sum
z[j] = sum_i exp(tau S[i, j] - m[j]) (`ColumnLogSumExp`); two partial states merge exactly, in float64:

    m = max(m_a, m_b),   z = z_a exp(m_a - m) + z_b exp(m_b - m),   L = m + log z.

Second pass (`dsl_block`): S'[i, j] = S[i, j] exp(tau S[i, j] - L[j]). (The official TS2-Net and CLIP-ViP v2t
DSL rows are their t2v DSL matrix transposed, a softmax over the texts: along a v2t row that keeps the raw order
wherever tau S > -1. The harness's v2t DSL is docs/protocol.md's, over the direction's queries, the videos.)

QB-Norm, querybank normalisation (DiCoSA's test loop, GLSCL's starred rows). A bank B (bank queries x the
same test gallery, scored by the same method: t2v the bank captions against the test videos, v2t the bank
videos against the test captions), k, beta, theta:

    A = {j : #{b : j is among the top-k of B[b, :]} >= theta}      (the active gallery items)
    row i is normalised iff argmax_j S[i, j] is in A, and then
    S'[i, j] = exp(beta S[i, j]) / sum_b exp(beta B[b, j]) = exp(beta S[i, j] - D[j]),
    D[j] = log sum_b exp(beta B[b, j]); every other row keeps S'[i, :] = S[i, :].

First pass (`empty_query_bank`, `add_bank_block` per block of the bank, `merge_query_banks` across processes): D as a `ColumnLogSumExp` at scale beta and the top-k counts; second
pass (`qbnorm_block`; `qbnorm_rows` tells which rows it normalises). Ties: a bank row's top-k and a test row's top-1 take, among tied
items, those of lowest index (the official numpy argsort leaves the choice unspecified). The official code
takes the test row's top-1 on float32 exp(beta S), whose argmax is the raw one except where float32 exp
saturates (beta S > 88.7 overflows to inf, ties): the raw argmax is taken here.

What `qbnorm_block` returns, computed in log space: the exact exp(x), x = beta S[i, j] - D[j], in float64
for |x| <= 700. That range holds every x where the official float32 value is finite and normal (|x| < 88.7);
where its exponentials exp(beta S), exp(beta B) are finite and normal too, the values equal the official ones
up to its float32 rounding. Beyond |x| = 700, where the official value is inf, nan, 0 or subnormal, a
strictly increasing continuation of exp stands in (exp(700) (x - 699) above, exp(-700) / (-699 - x) below):
different exponents never collapse into one value, so the ranks are those of the exact formula for
-5e3 < x < 1.8e4 (the float64 limits of the continuation). A score of -inf (an item an approximate index did
not return) gives 0 in a normalised row and stays -inf in DSL: below every other item.

DSL's exponent tau S[i, j] - L[j] is <= 0; the ranks are those of the exact formula while no factor
exp(tau S[i, j] - L[j]) underflows float64 (tau (max_i S[i, j] - S[i, j]) < 708 for every entry).

Every column sum is reduced column by column in one fixed order, so that equal gallery items (equal columns)
get bitwise equal normalisers and their ties survive post-processing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import torch
from torch import Tensor

from harness.errors import HarnessError

EXP_RANGE = 700.0  # |x| up to which exp(x) is returned as is (float64 overflows at 709.78)
EXP_AT_RANGE = torch.tensor(EXP_RANGE, dtype=torch.float64).exp().item()  # torch's, to join the inner part exactly


@dataclass(frozen=True)
class ColumnLogSumExp:
    """log sum_i exp(scale * S[i, j]) per gallery column j, over the query rows added so far (float64)."""

    scale: float
    maximum: Tensor  # (gallery,) max_i scale * S[i, j]; -inf before any row
    total: Tensor  # (gallery,) sum_i exp(scale * S[i, j] - maximum[j])
    rows: int

    @property
    def gallery(self) -> int:
        return self.maximum.shape[0]


def positive_number(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise HarnessError(f"{what} must be a finite number > 0, not {value!r}.")
    return float(value)


def gallery_width(block: Tensor, what: str) -> int:
    if block.dim() != 2:
        raise HarnessError(f"{what}: a score block must be (queries, gallery), not of shape {tuple(block.shape)}.")
    return block.shape[1]


def checked_block(block: Tensor, gallery: int, what: str) -> Tensor:
    """The block, checked to be (rows, gallery)."""
    if gallery_width(block, what) != gallery:
        raise HarnessError(f"{what}: a score block of gallery width {block.shape[1]} against state for a gallery "
                           f"of {gallery} items; every block of one direction (and its bank) must score the same "
                           "test gallery.")
    return block


def score_block(block: Tensor, gallery: int, what: str) -> Tensor:
    """The checked block as float64, a copy: the caller's tensor is never written."""
    return checked_block(block, gallery, what).to(torch.float64, copy=True)


def shifted_exp(values: Tensor, maximum: Tensor) -> Tensor:
    """exp(values - maximum), 0 where the maximum is -inf (then every value is -inf: nothing to add)."""
    return torch.where(maximum == -torch.inf, 0.0, torch.exp(values - maximum))


def column_sums(values: Tensor) -> Tensor:
    """Sums over the rows of (rows, gallery) values, each column reduced on its own in one fixed order: equal
    columns get bitwise equal sums (torch's reduction over dim 0 can round a column by its position)."""
    return values.t().contiguous().sum(dim=1)


def empty_column_logsumexp(gallery: int, scale: float) -> ColumnLogSumExp:
    return ColumnLogSumExp(scale, torch.full((gallery,), -torch.inf, dtype=torch.float64),
                           torch.zeros(gallery, dtype=torch.float64), 0)


def merge_column_logsumexp(a: ColumnLogSumExp, b: ColumnLogSumExp) -> ColumnLogSumExp:
    """The state of a's rows and b's rows together (e.g. two processes' shares of the blocks)."""
    if a.scale != b.scale or a.gallery != b.gallery:
        raise HarnessError(f"column log-sum-exp: cannot merge a state of scale {a.scale} over {a.gallery} items "
                           f"with one of scale {b.scale} over {b.gallery} items.")
    maximum = torch.maximum(a.maximum, b.maximum)
    total = a.total * shifted_exp(a.maximum, maximum) + b.total * shifted_exp(b.maximum, maximum)
    return ColumnLogSumExp(a.scale, maximum, total, a.rows + b.rows)


def add_rows(state: ColumnLogSumExp, block: Tensor, what: str = "column log-sum-exp") -> ColumnLogSumExp:
    """The state with the query rows of `block` (rows, gallery) added."""
    scaled = score_block(block, state.gallery, what).mul_(state.scale)
    if scaled.shape[0] == 0:
        return state
    maximum = scaled.amax(dim=0)
    part = ColumnLogSumExp(state.scale, maximum, column_sums(shifted_exp(scaled, maximum)), scaled.shape[0])
    return merge_column_logsumexp(state, part)


def log_normaliser(state: ColumnLogSumExp) -> Tensor:
    """(gallery,) float64: log sum_i exp(scale * S[i, j]) = maximum[j] + log total[j]."""
    return state.maximum + torch.log(state.total)


@dataclass(frozen=True)
class DslNormaliser:
    """DSL's first pass for one direction: tau and, per gallery column j, L[j] = log sum_i exp(tau S[i, j])
    over every test query i of the direction."""

    temperature: float
    log_normaliser: Tensor  # (gallery,) float64
    queries: int

    @property
    def gallery(self) -> int:
        return self.log_normaliser.shape[0]


def dsl_columns(gallery: int, temperature: float) -> ColumnLogSumExp:
    """An empty DSL column state at temperature tau; add every query block with `add_rows`, then
    `finish_dsl` (`dsl_normaliser` does all three over an iterable of blocks)."""
    return empty_column_logsumexp(gallery, positive_number(temperature, "DSL temperature"))


def finish_dsl(columns: ColumnLogSumExp) -> DslNormaliser:
    if columns.rows == 0:
        raise HarnessError("DSL: no query scored; its softmax runs over every test query of the direction, so the "
                           "first pass needs the direction's query blocks.")
    return DslNormaliser(columns.scale, log_normaliser(columns), columns.rows)


def dsl_values(scores: Tensor, exponents: Tensor) -> Tensor:
    """S exp(exponent); a -inf score stays -inf (not -inf * 0)."""
    return torch.where(scores == -torch.inf, -torch.inf, scores * torch.exp(exponents))


def dsl_block(normaliser: DslNormaliser, block: Tensor) -> Tensor:
    """(rows, gallery) float64: S'[i, j] = S[i, j] exp(tau S[i, j] - L[j]) for the block's query rows."""
    scores = score_block(block, normaliser.gallery, "DSL")
    exponents = scores * normaliser.temperature - normaliser.log_normaliser
    return dsl_values(scores, exponents)


@dataclass(frozen=True)
class QueryBank:
    """QB-Norm's first pass over a bank B (bank queries x the test gallery): the per-column
    log-denominators D[j] = log sum_b exp(beta B[b, j]) and how many bank queries have each item in their
    top k; `active` is A."""

    k: int
    beta: float
    theta: float
    denominator: ColumnLogSumExp  # at scale beta
    top_k_counts: Tensor  # (gallery,) int64

    @property
    def gallery(self) -> int:
        return self.denominator.gallery

    @property
    def bank_queries(self) -> int:
        return self.denominator.rows

    @property
    def active(self) -> Tensor:
        """(gallery,) bool: the items among the top-k of at least theta bank queries."""
        return self.top_k_counts >= self.theta


def qbnorm_settings(k: int, beta: float, theta: float) -> tuple[int, float, float]:
    """(k, beta, theta) checked: k an integer >= 1, beta a finite number > 0, theta a number >= 1."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise HarnessError(f"QB-Norm: k (the bank queries' top-k) must be an integer >= 1, not {k!r}.")
    if isinstance(theta, bool) or not isinstance(theta, Real) or not theta >= 1:
        raise HarnessError(f"QB-Norm: theta (how many bank queries make an item active) must be a number >= 1, "
                           f"not {theta!r}.")
    return k, positive_number(beta, "QB-Norm beta"), float(theta)


def empty_query_bank(gallery: int, *, k: int, beta: float, theta: float) -> QueryBank:
    """A bank with no query yet; add its blocks with `add_bank_block` (`query_bank` does both)."""
    k, beta, theta = qbnorm_settings(k, beta, theta)
    return QueryBank(k, beta, theta, empty_column_logsumexp(gallery, beta), torch.zeros(gallery, dtype=torch.int64))


def top_k_lowest_index(scores: Tensor, k: int) -> Tensor:
    """(rows, min(k, gallery)) the column indices of each row's k highest scores; among tied items, those of
    lowest index."""
    if k == 1:
        return scores.argmax(dim=1, keepdim=True)  # the first maximal index
    return scores.sort(dim=1, descending=True, stable=True).indices[:, :k]


def add_bank_block(bank: QueryBank, block: Tensor) -> QueryBank:
    """The bank with the bank queries of `block` (bank queries, gallery) added."""
    top_k = top_k_lowest_index(checked_block(block, bank.gallery, "QB-Norm bank"), bank.k).reshape(-1)
    counts = bank.top_k_counts + torch.bincount(top_k, minlength=bank.gallery)
    return QueryBank(bank.k, bank.beta, bank.theta, add_rows(bank.denominator, block, "QB-Norm bank"), counts)


def merge_query_banks(a: QueryBank, b: QueryBank) -> QueryBank:
    """The bank of a's queries and b's together (e.g. two processes' shares of the bank blocks)."""
    if (a.k, a.beta, a.theta) != (b.k, b.beta, b.theta):
        raise HarnessError(f"QB-Norm: cannot merge banks of k/beta/theta {a.k}/{a.beta}/{a.theta} and "
                           f"{b.k}/{b.beta}/{b.theta}.")
    return QueryBank(a.k, a.beta, a.theta, merge_column_logsumexp(a.denominator, b.denominator),
                     a.top_k_counts + b.top_k_counts)


def checked_bank(bank: QueryBank, block: Tensor) -> Tensor:
    if bank.bank_queries == 0:
        raise HarnessError("QB-Norm: the query bank is empty (no bank query scored); add its blocks first.")
    return score_block(block, bank.gallery, "QB-Norm")


def qbnorm_rows(bank: QueryBank, block: Tensor) -> Tensor:
    """(rows,) bool: the test query rows QB-Norm normalises, those whose top-1 item (raw scores, lowest
    index among ties) is active."""
    return bank.active[checked_bank(bank, block).argmax(dim=1)]


def order_keeping_exp(x: Tensor) -> Tensor:
    """exp(x) for |x| <= 700; beyond, its strictly increasing continuations exp(700) (x - 699) above and
    exp(-700) / (-699 - x) below (value and slope continuous at +-700), which stay finite and distinct where
    float64 exp would overflow or lose its normal range."""
    inner = torch.exp(x.clamp(-EXP_RANGE, EXP_RANGE))
    above = EXP_AT_RANGE * (x - (EXP_RANGE - 1.0))
    below = (1.0 / EXP_AT_RANGE) / (-(EXP_RANGE - 1.0) - x)
    return torch.where(x > EXP_RANGE, above, torch.where(x < -EXP_RANGE, below, inner))


def qbnorm_block(bank: QueryBank, block: Tensor) -> Tensor:
    """(rows, gallery) float64: the QB-Norm block of the block's test query rows. A normalised row i gets
    S'[i, j] = exp(beta S[i, j] - D[j]) (`order_keeping_exp`; see the module docstring for what is returned
    where float exp saturates); every other row keeps its scores."""
    scores = checked_bank(bank, block)
    rows = bank.active[scores.argmax(dim=1)]
    exponents = scores[rows] * bank.beta - log_normaliser(bank.denominator)
    scores[rows] = order_keeping_exp(exponents)
    return scores
