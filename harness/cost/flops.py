"""Multiply-adds (MACs) of one call, counted twice and cross-checked (docs/cost.md sections 1-2).

- fvcore traces the call (torch.jit.trace) and counts one per multiply-add (MACs); it also counts norms.
- torch's FlopCounterMode counts 2 per multiply-add (true FLOPs); stored here halved, as MACs.
Traps handled while counting: the nn.MultiheadAttention fast path is switched off (it would hide the
attention from both counters); scaled-dot-product attention, LSTMs and torch.cdist get a handle in fvcore
and a formula in FlopCounterMode (FVCORE_EXTRA, FLOP_COUNTER_EXTRA: the one table of what is added). An operator fvcore cannot count that does matrix work is an
error; the two counters must agree within 1% once fvcore's norm terms are set aside (FlopCounterMode
does not count norms).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

# fvcore.nn scripts a loss at import; torch's deprecation notice about it is not the user's business.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

from harness.errors import HarnessError

FVCORE = "fvcore (1 per multiply-add)"
FLOP_COUNTER = "torch FlopCounterMode (2 per multiply-add, halved)"
AGREEMENT = 0.01
# Operators whose names say they do matrix work: never silently skipped.
MATRIX_WORK = ("mm", "matmul", "einsum", "linear", "conv", "attention", "lstm", "gru", "rnn", "bilinear", "tensordot",
               "cdist")
# Operators a word of MATRIX_WORK names that do no multiply-add (interpolation weights are element-wise).
NOT_MATRIX_WORK = ("upsample",)


@dataclass
class Count:
    macs: float  # fvcore
    check_macs: float  # FlopCounterMode / 2
    counter: str = FVCORE
    check_counter: str = FLOP_COUNTER


def attention_macs(query: list[int], key: list[int], value: list[int]) -> int:
    """q (..., L, E), k (..., S, E), v (..., S, Ev): L S E for the scores plus L S Ev for the weighted sum."""
    *batch, length, dim = query
    source, value_dim = key[-2], value[-1]
    return int(torch.tensor(batch).prod().item() if batch else 1) * length * source * (dim + value_dim)


def _fvcore_attention(inputs: list, outputs: list) -> int:
    return attention_macs(get_shape(inputs[0]), get_shape(inputs[1]), get_shape(inputs[2]))


def _flop_counter_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * attention_macs(list(query), list(key), list(value))


def cdist_macs(x1: list[int], x2: list[int], extra: int = 0) -> int:
    """x1 (..., P, M), x2 (..., R, M): P R M multiply-adds for the distances (`extra` per pair where torch's
    matmul form adds the squared norms)."""
    *batch, rows, dim = x1
    return int(torch.tensor(batch).prod().item() if batch else 1) * rows * x2[-2] * (dim + extra)


def _fvcore_cdist(inputs: list, outputs: list) -> int:
    return cdist_macs(get_shape(inputs[0]), get_shape(inputs[1]))


def _flop_counter_cdist(x1, x2, *args, out_shape=None, **kwargs) -> int:
    return 2 * cdist_macs(list(x1), list(x2))


def lstm_macs(positions: int, weight_shapes: list[list[int]]) -> int:
    """Every position meets every gate weight matrix once (any layer count, either direction)."""
    return positions * sum(shape[0] * shape[1] for shape in weight_shapes if len(shape) == 2)


def _positions(data: list[int]) -> int:
    """(T, B, I) or (B, T, I) padded, or (sum of lengths, I) packed."""
    return data[0] if len(data) == 2 else data[0] * data[1]


def _fvcore_lstm(inputs: list, outputs: list) -> int:
    """aten::lstm: the params list is the list input with the most elements (hx has two)."""
    lists = [[get_shape(v) for v in value.node().inputs()] for value in inputs
             if value.node().kind() == "prim::ListConstruct"]
    return lstm_macs(_positions(get_shape(inputs[0])), max(lists, key=len))


def _flop_counter_lstm(data, *args, out_shape=None, **kwargs) -> int:
    lists = [arg for arg in args if isinstance(arg, (list, tuple)) and arg and isinstance(arg[0], (list, tuple))]
    return 2 * lstm_macs(_positions(list(data)), [list(shape) for shape in max(lists, key=len)])


def _flop_counter_mkldnn_lstm_layer(data, input_weight, hidden_weight, *args, out_shape=None, **kwargs) -> int:
    """One layer of the CPU LSTM kernel (what aten::lstm becomes on CPU)."""
    return 2 * lstm_macs(_positions(list(data)), [list(input_weight), list(hidden_weight)])


FLOP_COUNTER_EXTRA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _flop_counter_attention,
                      torch.ops.aten.lstm: _flop_counter_lstm,
                      torch.ops.aten.mkldnn_rnn_layer: _flop_counter_mkldnn_lstm_layer,
                      torch.ops.aten._cdist_forward: _flop_counter_cdist,
                      torch.ops.aten._euclidean_dist: _flop_counter_cdist}
# fvcore handles by operator, the one table of what the harness adds to fvcore's own.
FVCORE_EXTRA = {"aten::scaled_dot_product_attention": _fvcore_attention, "aten::lstm": _fvcore_lstm,
                "aten::cdist": _fvcore_cdist}


class _Call(nn.Module):
    """fvcore traces a module with tensor inputs: this one calls `fn` on them. `owner` (the module whose
    parameters fn uses) is registered so that the tracer sees those as parameters, not constants."""

    def __init__(self, fn: Callable[..., Tensor], owner: nn.Module):
        super().__init__()
        self.fn, self.owner = fn, owner

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.fn(*inputs)


@contextmanager
def counting_mode(owner: nn.Module):
    """No MHA fast path (it hides attention from the counters), no gradients, quiet fvcore. The owner's
    parameters stop requiring grad meanwhile: a view of one taken under no_grad still reports
    requires_grad, which FlopCounterMode's module tracker cannot handle."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    level = logging.getLogger("fvcore").level
    logging.getLogger("fvcore").setLevel(logging.ERROR)
    trainable = [p for p in owner.parameters() if p.requires_grad]
    for parameter in trainable:
        parameter.requires_grad_(False)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
        logging.getLogger("fvcore").setLevel(level)
        for parameter in trainable:
            parameter.requires_grad_(True)


def count_macs(fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], owner: nn.Module, what: str) -> Count:
    """MACs of fn(*inputs) by both counters; `owner` holds fn's parameters, `what` names the call in errors."""
    with counting_mode(owner):
        analysis = FlopCountAnalysis(_Call(fn, owner), inputs)
        analysis.set_op_handle(*(item for pair in FVCORE_EXTRA.items() for item in pair))
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        macs = float(analysis.total())
        norms = float(sum(count for op, count in analysis.by_operator().items() if "norm" in op))
        missed = sorted(op for op in analysis.unsupported_ops() if any(word in op for word in MATRIX_WORK)
                        and not any(word in op for word in NOT_MATRIX_WORK))
        if missed:
            raise HarnessError(f"cost: {what}: fvcore cannot count {', '.join(missed)}, which do matrix work; "
                               "register a handle rather than report a count without them.")
        with FlopCounterMode(display=False, custom_mapping=FLOP_COUNTER_EXTRA) as counter:
            fn(*inputs)
        check = counter.get_total_flops() / 2
    if abs(macs - norms - check) > AGREEMENT * max(macs - norms, check, 1.0):
        raise HarnessError(f"cost: {what}: the counters disagree beyond 1%: fvcore {macs - norms:.4g} MACs without its "
                           f"norms, FlopCounterMode {check:.4g} MACs: an operator is missed by one of them.")
    return Count(macs, check)
