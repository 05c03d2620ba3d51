"""Post-processing block by block (harness/retrieval/postprocess.py): DSL and QB-Norm against the official
outputs in the golden files, and against the full-matrix float64 formulas written here, on every split shape
the engine ranks (square = paragraph: one caption per video; multi-caption: v2t against caption groups), both
directions and several block sizes, with planted ties.

Golden: `ts2net_golden.pt` and `clipvip_golden.pt` hold `score` (texts x videos) and the official
`score_dsl = score * softmax(tau * score, axis=0)` (float32 numpy); their v2t rows are `score_dsl` transposed.
`dicosa_golden.pt` holds `score`, the bank scores (`bank_t2v_score`: bank texts x test videos;
`bank_v2t_score`: test texts x bank videos), the official QB-Normed matrices of `_run_on_single_gpu`
(`score_t2v_qbnorm`, `score_v2t_qbnorm` = rows of S^T) and the rows it normalised; k, beta and theta per
direction come from its `config`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import Tensor

from conftest import load_golden
from harness.errors import HarnessError
from harness.retrieval.metrics import Ranking, concat_rankings, text_to_video, videos_against_captions
from harness.retrieval.postprocess import (DslNormaliser, QueryBank, add_bank_block, add_rows, dsl_block, dsl_columns,
                                           empty_query_bank, finish_dsl, log_normaliser, merge_column_logsumexp,
                                           merge_query_banks, qbnorm_block, qbnorm_rows)

# The official DSL temperatures: TS2-Net's score already carries the logit scale (softmax(score));
# CLIP-ViP's is a cosine (np_softmax(score * 100)).
OFFICIAL_DSL_TEMPERATURE = {"ts2net": 1.0, "clipvip": 100.0}
DSL_GOLDEN_TOLERANCE = 1e-6  # relative: fp32 rounding of values up to about 14 (TS2-Net) is about 1e-6 of them
STREAMING_TOLERANCE = 1e-12  # relative, streamed float64 blocks against the full-matrix float64 formulas
FLOAT32_HALF_ULP = 2.0 ** -24


def max_relative_error(value: Tensor, reference: Tensor) -> float:
    reference = reference.double()
    return float(((value.double() - reference).abs() / reference.abs()).max())


def blocks_of(matrix: Tensor, size: int) -> list[tuple[int, Tensor]]:
    """(start, rows) blocks of `size` query rows against the whole gallery, float32 as the engine gives them."""
    return [(q0, matrix[q0 : q0 + size].float()) for q0 in range(0, matrix.shape[0], size)]


def dsl_normaliser(blocks, temperature: float) -> DslNormaliser:
    """DSL's first pass over every query block of a direction, as the engine makes it (one process)."""
    blocks = list(blocks)
    columns = dsl_columns(blocks[0].shape[-1], temperature)
    for block in blocks:
        columns = add_rows(columns, block)
    return finish_dsl(columns)


def query_bank(blocks, k: int, beta: float, theta: float) -> QueryBank:
    """QB-Norm's first pass over every block of the bank."""
    blocks = list(blocks)
    bank = empty_query_bank(blocks[0].shape[-1], k=k, beta=beta, theta=theta)
    for block in blocks:
        bank = add_bank_block(bank, block)
    return bank


def block_sizes(n: int) -> list[int]:
    """1, a size that does not divide n, and all at once."""
    not_dividing = next(size for size in range(2, n) if n % size)
    return [1, not_dividing, n]


# --- golden -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["ts2net", "clipvip"])
def test_dsl_reproduces_the_official_dsl(method):
    golden = load_golden(f"{method}_golden.pt")
    score, official = golden["score"], golden["score_dsl"]
    temperature = OFFICIAL_DSL_TEMPERATURE[method]
    for size in block_sizes(score.shape[0]):
        normaliser = dsl_normaliser((block for _, block in blocks_of(score, size)), temperature)
        streamed = torch.cat([dsl_block(normaliser, block) for _, block in blocks_of(score, size)])
        assert max_relative_error(streamed, official) <= DSL_GOLDEN_TOLERANCE


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_qbnorm_reproduces_the_official_rows(direction):
    golden = load_golden("dicosa_golden.pt")
    config = golden["config"]
    settings = {name: config[f"{direction}_{name}"] for name in ("k", "beta", "theta")}
    # the direction's matrix and its bank (bank queries x the test gallery)
    scores = golden["score"] if direction == "t2v" else golden["score"].t()
    bank_scores = golden["bank_t2v_score"] if direction == "t2v" else golden["bank_v2t_score"].t()
    official, official_rows = golden[f"score_{direction}_qbnorm"], golden[f"qbnorm_{direction}_rows"]
    assert official_rows.any() and not official_rows.all()  # the golden mixes normalised and raw rows
    # float32 rounding of beta S and beta B (half an ulp of each argument), of exp, the bank sum and the division
    beta = settings["beta"]
    tolerance = (float((beta * scores).abs().max() + (beta * bank_scores).abs().max()) * FLOAT32_HALF_ULP
                 + (bank_scores.shape[0] + 4) * 2 * FLOAT32_HALF_ULP)
    for size in block_sizes(bank_scores.shape[0]):
        bank = query_bank((block for _, block in blocks_of(bank_scores, size)), **settings)
        rows = torch.cat([qbnorm_rows(bank, block) for _, block in blocks_of(scores, size)])
        streamed = torch.cat([qbnorm_block(bank, block) for _, block in blocks_of(scores, size)])
        assert torch.equal(rows, official_rows)
        assert max_relative_error(streamed[rows], official[rows]) <= tolerance
        assert torch.equal(streamed[~rows], official[~rows].double())  # raw rows: the official float32 values


# --- full-matrix references (float64, column by column, no shift: the formulas as written) --------------


def dsl_reference(scores: Tensor, temperature: float) -> Tensor:
    """S'[i, j] = S[i, j] exp(tau S[i, j]) / sum_i' exp(tau S[i', j])."""
    scores = scores.double()
    result = torch.empty_like(scores)
    for j in range(scores.shape[1]):
        weights = torch.exp(temperature * scores[:, j])
        result[:, j] = scores[:, j] * weights / weights.sum()
    return result


def lowest_index_top_k(row: list[float], k: int) -> list[int]:
    return sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]


def qbnorm_reference(scores: Tensor, bank: Tensor, k: int, beta: float, theta: float) -> tuple[Tensor, Tensor]:
    """The normalised matrix and its normalised rows: A = items in the top-k of >= theta bank rows; a row
    whose top-1 is in A gets exp(beta S[i, j]) / sum_b exp(beta B[b, j])."""
    scores, bank = scores.double(), bank.double()
    counts = [0] * scores.shape[1]
    for bank_row in bank.tolist():
        for j in lowest_index_top_k(bank_row, k):
            counts[j] += 1
    denominators = torch.stack([torch.exp(beta * bank[:, j]).sum() for j in range(bank.shape[1])])
    result, normalised = scores.clone(), []
    for i, row in enumerate(scores.tolist()):
        normalised.append(counts[lowest_index_top_k(row, 1)[0]] >= theta)
        if normalised[-1]:
            result[i] = torch.exp(beta * scores[i]) / denominators
    return result, torch.tensor(normalised)


# --- synthetic splits with planted ties -----------------------------------------------------------------

CAPTIONS_PER_VIDEO = {"square": [1] * 9, "multi-caption": [3, 1, 4, 2, 3, 2, 2]}  # paragraph splits are square


@dataclass
class Split:
    """Cosine scores of a split (t2v: captions x videos, float32), the video of each caption, and a bank per
    direction (bank queries x that direction's gallery)."""

    t2v: Tensor
    owners: Tensor
    banks: dict[str, Tensor]

    @property
    def n_videos(self) -> int:
        return self.t2v.shape[1]

    def scores(self, direction: str) -> Tensor:
        return self.t2v if direction == "t2v" else self.t2v.t().contiguous()

    def ranks(self, direction: str, block: Tensor, q0: int) -> Ranking:
        """The engine's ranks of the queries q0.. whose post-processed rows `block` holds."""
        if direction == "t2v":
            return text_to_video(block, self.owners[q0 : q0 + block.shape[0]])
        return videos_against_captions(block, torch.arange(q0, q0 + block.shape[0]), self.owners, self.n_videos)


DUPLICATE_VIDEOS = (2, 5)  # video 5 scores exactly as video 2: equal columns of t2v, equal rows of v2t


def bank_with_popular_items(generator: torch.Generator, n_bank: int, gallery: int, popular: list[int],
                            hits: int) -> Tensor:
    """Random bank scores where each popular item is the top-1 of `hits` bank rows (the others: random)."""
    bank = torch.rand(n_bank, gallery, generator=generator) * 0.6 - 0.2
    targets = [item for item in popular for _ in range(hits)]
    targets += torch.randint(0, gallery, (n_bank - len(targets),), generator=generator).tolist()
    for row, item in enumerate(targets):
        bank[row, item] = bank[row].max() + 0.2
    return bank


def make_split(shape: str, seed: int = 0) -> Split:
    generator = torch.Generator().manual_seed(seed)
    counts = CAPTIONS_PER_VIDEO[shape]
    owners = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    n_captions, n_videos = len(owners), len(counts)
    t2v = torch.rand(n_captions, n_videos, generator=generator) * 0.5
    t2v[torch.arange(n_captions), owners] += 0.3  # a retrieval signal: mostly the ground truth on top
    # planted ties: a caption scoring video 0 highest, duplicated as a caption of another video (equal t2v
    # rows, equal v2t columns: video 0 ties its own caption group with the other one's) ...
    first, second = int((owners == 0).nonzero()[0]), int((owners == 3).nonzero()[-1])
    t2v[first, 0] = 0.99
    t2v[second] = t2v[first]
    # ... exact ties inside rows, one of them across the top-1 of a caption of video 1 ...
    t2v[1, 0] = t2v[1, 4]
    top = int((owners == 1).nonzero()[0])
    t2v[top, 6] = t2v[top, 1] = t2v[top].max() + 0.05
    # ... and a duplicated video (its caption's ground truth ties with the duplicate)
    t2v[:, DUPLICATE_VIDEOS[1]] = t2v[:, DUPLICATE_VIDEOS[0]]
    # banks: t2v over the videos (popular 2 with its duplicate 5, and 1: the tied top-1 at 1 and 6 is 1's),
    # v2t over the captions (popular: the duplicated caption and its copy tie in every bank row: the first
    # counts)
    t2v_bank = bank_with_popular_items(generator, 16, n_videos, [DUPLICATE_VIDEOS[0], 1], hits=5)
    t2v_bank[:, DUPLICATE_VIDEOS[1]] = t2v_bank[:, DUPLICATE_VIDEOS[0]]
    v2t_bank = bank_with_popular_items(generator, 16, n_captions, [first, n_captions - 1], hits=5)
    v2t_bank[:, second] = v2t_bank[:, first]
    return Split(t2v, owners, {"t2v": t2v_bank, "v2t": v2t_bank})


# DSL on logits (tau 1 on 100 x cosines, as TS2-Net) and on cosines (tau 100, as CLIP-ViP)
DSL_SCALES = {"logits": (100.0, 1.0), "cosines": (1.0, 100.0)}


def assert_same_ranks(blocks: list[Ranking], reference: Ranking) -> None:
    streamed = concat_rankings(blocks)
    assert np.array_equal(streamed.ranks, reference.ranks)
    assert np.array_equal(streamed.tied, reference.tied)


def check_streaming(split: Split, direction: str, reference: Tensor,
                    post_processed_blocks: Callable[[int], list[tuple[int, Tensor]]]) -> Ranking:
    """For every block size: the post-processed blocks equal the reference rows and rank as it does."""
    full_ranks = split.ranks(direction, reference, 0)
    for size in block_sizes(reference.shape[0]):
        blocks = post_processed_blocks(size)
        assert max_relative_error(torch.cat([block for _, block in blocks]), reference) <= STREAMING_TOLERANCE
        assert_same_ranks([split.ranks(direction, block, q0) for q0, block in blocks], full_ranks)
    return full_ranks


@pytest.mark.parametrize("kind", DSL_SCALES)
@pytest.mark.parametrize("direction", ["t2v", "v2t"])
@pytest.mark.parametrize("shape", CAPTIONS_PER_VIDEO)
def test_streaming_dsl_equals_the_full_formula(shape, direction, kind):
    split = make_split(shape)
    scale, temperature = DSL_SCALES[kind]
    scores = split.scores(direction) * scale

    def streamed(size: int) -> list[tuple[int, Tensor]]:
        normaliser = dsl_normaliser((block for _, block in blocks_of(scores, size)), temperature)
        assert normaliser.queries == scores.shape[0]
        return [(q0, dsl_block(normaliser, block)) for q0, block in blocks_of(scores, size)]

    reference_ranks = check_streaming(split, direction, dsl_reference(scores, temperature), streamed)
    assert reference_ranks.ties > 0  # the planted ties survive DSL


QBNORM_SETTINGS = {"official-t2v": {"k": 1, "beta": 70.0, "theta": 3},
                   "official-v2t": {"k": 1, "beta": 70.0, "theta": 5},
                   "top-2": {"k": 2, "beta": 50.0, "theta": 4}}


@pytest.mark.parametrize("settings", QBNORM_SETTINGS)
@pytest.mark.parametrize("direction", ["t2v", "v2t"])
@pytest.mark.parametrize("shape", CAPTIONS_PER_VIDEO)
def test_streaming_qbnorm_equals_the_full_formula(shape, direction, settings):
    split = make_split(shape)
    settings = QBNORM_SETTINGS[settings]
    scores, bank_scores = split.scores(direction), split.banks[direction]
    reference, reference_rows = qbnorm_reference(scores, bank_scores, **settings)
    assert reference_rows.any() and not reference_rows.all()  # mixed rows, as in the official runs

    def streamed(size: int) -> list[tuple[int, Tensor]]:
        bank = query_bank((block for _, block in blocks_of(bank_scores, size)), **settings)
        assert bank.bank_queries == bank_scores.shape[0]
        rows = torch.cat([qbnorm_rows(bank, block) for _, block in blocks_of(scores, size)])
        assert torch.equal(rows, reference_rows)
        return [(q0, qbnorm_block(bank, block)) for q0, block in blocks_of(scores, size)]

    reference_ranks = check_streaming(split, direction, reference, streamed)
    assert reference_ranks.ties > 0


def test_equal_gallery_items_get_bitwise_equal_values():
    """Equal columns (the same gallery item twice) keep bitwise equal post-processed scores, wherever they sit:
    here every even column of a gallery of 67 (a shape where torch's sum over rows rounds some columns by
    their position)."""
    generator = torch.Generator().manual_seed(4)
    scores, bank_scores = torch.rand(7, 67, generator=generator), torch.rand(7, 67, generator=generator)
    scores[:, 0] += 1.0
    bank_scores[:, 0] += 1.0  # the duplicated item: every bank row's top-1 (active), every query's too
    scores[:, ::2], bank_scores[:, ::2] = scores[:, :1], bank_scores[:, :1]
    for size in block_sizes(scores.shape[0]):
        dsl = dsl_normaliser((block for _, block in blocks_of(scores, size)), 1.0)
        bank = query_bank((block for _, block in blocks_of(bank_scores, size)), k=1, beta=70.0, theta=3)
        for normaliser in (dsl.log_normaliser, log_normaliser(bank.denominator)):
            assert bool((normaliser[::2] == normaliser[0]).all())
        qbnorm = qbnorm_block(bank, scores)
        assert qbnorm_rows(bank, scores).all()  # each row's top-1 is the lowest duplicate, 0
        for post_processed in (dsl_block(dsl, scores), qbnorm):
            assert bool((post_processed[:, ::2] == post_processed[:, :1]).all())


def test_ties_take_the_lowest_index():
    """Hand counts: a bank row's top-k and a query's top-1 take the tied items of lowest index."""
    top_1 = query_bank([torch.tensor([[0.5, 0.5, 0.0, 0.0]] * 3)], k=1, beta=70.0, theta=3)
    assert top_1.top_k_counts.tolist() == [3, 0, 0, 0]
    top_2 = query_bank([torch.tensor([[1.0, 0.5, 0.5, 0.0]] * 2)], k=2, beta=70.0, theta=2)
    assert top_2.top_k_counts.tolist() == [2, 2, 0, 0]
    queries = torch.tensor([[0.3, 0.3, 0.1, 0.0], [0.0, 0.3, 0.3, 0.1], [0.0, 0.1, 0.3, 0.3]])
    assert qbnorm_rows(top_1, queries).tolist() == [True, False, False]
    assert qbnorm_rows(top_2, queries).tolist() == [True, True, False]


@pytest.mark.parametrize("direction", ["t2v", "v2t"])
def test_merged_partial_states_equal_one_pass(direction):
    """Two processes' shares of the blocks (alternate blocks), merged: the same post-processed blocks."""
    split = make_split("multi-caption")
    scores, bank_scores = split.scores(direction), split.banks[direction]
    query_parts, bank_parts = blocks_of(scores, 3), blocks_of(bank_scores, 3)
    temperature, settings = DSL_SCALES["cosines"][1], QBNORM_SETTINGS[f"official-{direction}"]

    columns = [dsl_columns(scores.shape[1], temperature) for _ in range(2)]
    banks = [empty_query_bank(bank_scores.shape[1], **settings) for _ in range(2)]
    for index, (_, block) in enumerate(query_parts):
        columns[index % 2] = add_rows(columns[index % 2], block)
    for index, (_, block) in enumerate(bank_parts):
        banks[index % 2] = add_bank_block(banks[index % 2], block)
    dsl = finish_dsl(merge_column_logsumexp(*columns))
    bank = merge_query_banks(*banks)

    one_pass_dsl = dsl_normaliser((block for _, block in query_parts), temperature)
    one_pass_bank = query_bank((block for _, block in bank_parts), **settings)
    assert torch.equal(bank.top_k_counts, one_pass_bank.top_k_counts)
    for _, block in query_parts:
        assert max_relative_error(dsl_block(dsl, block), dsl_block(one_pass_dsl, block)) <= STREAMING_TOLERANCE
        assert max_relative_error(qbnorm_block(bank, block), qbnorm_block(one_pass_bank, block)) <= STREAMING_TOLERANCE


def test_qbnorm_keeps_the_exact_ranks_where_exp_overflows():
    """Logit-scale scores at beta 70: exponents in the thousands, where exp overflows float64; the values
    stay finite and rank as the exponents beta S - D do."""
    split = make_split("square")
    scores, bank_scores = split.t2v * 100.0, split.banks["t2v"] * 100.0
    settings = QBNORM_SETTINGS["official-t2v"]
    bank = query_bank([bank_scores], **settings)
    rows = qbnorm_rows(bank, scores)
    exponents = settings["beta"] * scores.double()[rows] - torch.logsumexp(settings["beta"] * bank_scores.double(), 0)
    assert torch.exp(exponents).isinf().any() and (torch.exp(exponents) == 0).any()  # float64 exp fails here
    result = qbnorm_block(bank, scores)
    assert bool(result[rows].isfinite().all() and (result[rows] > 0).all())
    inside = exponents.abs() <= 700
    assert max_relative_error(result[rows][inside], torch.exp(exponents[inside])) <= STREAMING_TOLERANCE
    owners = split.owners[rows]
    assert_same_ranks([text_to_video(result[rows], owners)], text_to_video(exponents, owners))
    assert torch.equal(result[~rows], scores[~rows].double())


def test_minus_inf_scores_stay_below_every_item():
    """An item an approximate index did not return scores -inf: -inf after DSL, 0 in a normalised QB-Norm row."""
    split = make_split("square")
    scores = split.t2v.clone()
    scores[:, 3] = -torch.inf
    scores[0, 4] = -torch.inf
    caller_copy = scores.double()
    dsl = dsl_block(dsl_normaliser([scores], 100.0), caller_copy)
    assert torch.equal(caller_copy, scores.double())  # the caller's block is never written
    assert bool((dsl[scores == -torch.inf] == -torch.inf).all() and dsl[scores > -torch.inf].isfinite().all())
    bank = query_bank([split.banks["t2v"]], **QBNORM_SETTINGS["official-t2v"])
    rows = qbnorm_rows(bank, scores)
    normalised, missing = qbnorm_block(bank, scores)[rows], scores[rows] == -torch.inf
    assert rows.any() and missing.any()
    assert bool((normalised[missing] == 0).all() and (normalised[~missing] > 0).all())


SCORES = torch.rand(4, 3)
BANK = query_bank([torch.rand(6, 3)], k=1, beta=70.0, theta=3)


@pytest.mark.parametrize("call, message", [
    (lambda: qbnorm_block(query_bank([torch.rand(0, 3)], k=1, beta=70.0, theta=3), SCORES), "query bank is empty"),
    (lambda: qbnorm_block(empty_query_bank(3, k=1, beta=70.0, theta=3), SCORES), "query bank is empty"),
    (lambda: qbnorm_block(BANK, torch.rand(4, 5)), "gallery width 5 .* gallery of 3"),
    (lambda: qbnorm_rows(BANK, torch.rand(4, 5)), "gallery width 5"),
    (lambda: query_bank([torch.rand(2, 3), torch.rand(2, 4)], k=1, beta=70.0, theta=3), "gallery width 4"),
    (lambda: query_bank([SCORES], k=1, beta=70.0, theta=0), "theta"),
    (lambda: query_bank([SCORES], k=1, beta=70.0, theta=0.5), "theta"),
    (lambda: query_bank([SCORES], k=0, beta=70.0, theta=3), "k \\(the bank"),
    (lambda: query_bank([SCORES], k=1.0, beta=70.0, theta=3), "k \\(the bank"),
    (lambda: query_bank([SCORES], k=1, beta=0.0, theta=3), "beta"),
    (lambda: query_bank([SCORES], k=1, beta=-70.0, theta=3), "beta"),
    (lambda: query_bank([SCORES], k=1, beta=float("nan"), theta=3), "beta"),
    (lambda: dsl_normaliser([SCORES], 0.0), "temperature"),
    (lambda: dsl_normaliser([SCORES], -1.0), "temperature"),
    (lambda: dsl_normaliser([torch.rand(0, 3)], 1.0), "no query scored"),
    (lambda: dsl_normaliser([SCORES[0]], 1.0), "shape \\(3,\\)"),
    (lambda: dsl_block(dsl_normaliser([SCORES], 1.0), torch.rand(2, 4)), "gallery width 4"),
])
def test_bad_inputs_are_refused(call, message):
    with pytest.raises(HarnessError, match=message):
        call()
