"""Absorb Mul/Div/Add/Sub by constants that follow a Conv/ConvTranspose/Gemm/MatMul into its
weight and bias. Each op is an affine map y·s + t per output channel: `y*c`, `c*y` (s=c),
`y/c` (s=1/c), `y+c`, `c+y` (t=c), `y-c` (t=-c), `c-y` (s=-1, t=c); `c/y` is not affine."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from . import transform
from .affine import LINEAR_OPS, Linear, fold_affine, linear_of, overflow_reason, sole_output_reason
from .graphio import merge_metadata, rank_finder
from .graphops import tidy
from .patterns import (
    adopt_outputs,
    const_array,
    name_maker,
    nodes_of,
    producer,
    set_const_input,
)
from .report import TransformReport

ELEMENTWISE = ("Mul", "Div", "Add", "Sub")


# Layout ops move elements without computing on them: a single-value scale or shift commutes
# with them, so it may fold into the Linear before them (DETR scales q and k after the
# head-split Reshape/Transpose).
LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity")


@transform("absorb-const")
def absorb_const(graph: gs.Graph) -> TransformReport:
    """Fold constant Mul/Div (into weight and bias) and Add/Sub (into bias; MatMul becomes Gemm
    when 2-D) after Conv/ConvTranspose/Gemm/MatMul, after such a node's bias Add (any rank: the
    Add keeps the new bias), and single-value ones through Reshape/Transpose/... between;
    refuses `c / x`, zero divisors, constants not per-output-channel, shared or non-constant
    weights, and shared intermediates."""
    report = TransformReport("absorb-const", verb="absorbed")
    fresh, rank = name_maker(graph), rank_finder(graph)
    # Graph order is topological, so a chain conv→Mul→Div folds link by link.
    for node in nodes_of(graph, *ELEMENTWISE):
        operands = _split_operands(node)
        if operands is None:
            continue
        index, c = operands
        chain = _layout_chain(graph, node, node.inputs[1 - index], c, rank)
        reader = chain[0] if chain else node
        source = producer(reader.inputs[0] if chain else node.inputs[1 - index])
        if source is None:
            continue
        if source.op == "Add" and (biased := _bias_of_linear(graph, source, rank)) is not None:
            plan = _plan_through_bias(graph, biased, reader, node, index, c, bool(chain))
            if isinstance(plan, str):
                report.skip(node, plan)
                continue
            lin, s, bias_index, bias = plan
            # (x·W + b)·s + t = x·(W·s) + (b·s + t): the bias Add stays, on 3-D inputs too.
            fold_affine(lin, s, np.zeros_like(s), fresh, graph)
            set_const_input(source, bias_index, bias, fresh(f"{source.name}.bias"), graph)
        elif source.op in LINEAR_OPS:
            plan = _plan(graph, source, reader, node, index, c, rank, bool(chain))
            if isinstance(plan, str):
                report.skip(node, plan)
                continue
            lin, s, t = plan
            fold_affine(lin, s, t, fresh, graph)
        else:
            continue
        merge_metadata(graph, source, node)
        adopt_outputs(chain[-1] if chain else source, node)
        report.rewrote(node)
    if report.rewritten:
        tidy(graph)
    return report


def _split_operands(node: gs.Node) -> tuple[int, np.ndarray] | None:
    """(index of the constant input, its value) when exactly one of two inputs is constant."""
    if len(node.inputs) != 2:
        return None
    values = [const_array(t) for t in node.inputs]
    if (values[0] is None) == (values[1] is None):
        return None
    index = 0 if values[0] is not None else 1
    return index, values[index]


def _layout_chain(graph: gs.Graph, node: gs.Node, tensor: gs.Tensor, c: np.ndarray,
                  rank: Callable[[gs.Tensor], int | None]) -> list[gs.Node]:
    """The layout nodes (first to last) between `node` and the op before them, each output
    read only by the next; empty unless c is one value that cannot raise `tensor`'s rank."""
    known = rank(tensor)
    if c.size != 1 or (c.ndim > 0 and (known is None or c.ndim > known)):
        return []
    chain: list[gs.Node] = []
    reader = node
    while (layout := producer(tensor)) is not None and layout.op in LAYOUT_OPS:
        if sole_output_reason(graph, layout, reader):
            return []
        chain.insert(0, layout)
        reader, tensor = layout, layout.inputs[0]
    return chain


def _scale_vector(c: np.ndarray, lin: Linear, uniform: bool) -> np.ndarray | str:
    return np.full(lin.channels, c.reshape(-1)[0]) if uniform else channel_vector(c, lin)


def _plan(graph: gs.Graph, source: gs.Node, reader: gs.Node, node: gs.Node, index: int,
          c: np.ndarray, rank: Callable[[gs.Tensor], int | None], uniform: bool
          ) -> tuple[Linear, np.ndarray, np.ndarray] | str:
    if reason := sole_output_reason(graph, source, reader):
        return reason
    lin = linear_of(graph, source, rank)
    if isinstance(lin, str):
        return lin
    if not np.issubdtype(c.dtype, np.floating):
        return f"constant is {c.dtype}, not floating point"
    vector = _scale_vector(c, lin, uniform)
    if isinstance(vector, str):
        return vector
    affine = _affine(node.op, index, vector)
    if isinstance(affine, str):
        return affine
    s, t = affine
    if reason := overflow_reason(lin, s, t):
        return reason
    if lin.node.op == "MatMul" and np.any(t != 0) and lin.out_rank != 2:
        return "a bias on a MatMul needs a 2-D output (to become Gemm)"
    return lin, s, t


def _bias_of_linear(graph: gs.Graph, add: gs.Node,
                    rank: Callable[[gs.Tensor], int | None]
                    ) -> tuple[gs.Node, Linear, int, np.ndarray] | None:
    """(add, the Linear, the constant's input index, its value) when `add` is the bias Add of a
    Conv/Gemm/MatMul whose weights may be rewritten and whose output only `add` reads."""
    operands = _split_operands(add)
    if operands is None:
        return None
    index, bias = operands
    source = producer(add.inputs[1 - index])
    if source is None or source.op not in LINEAR_OPS or sole_output_reason(graph, source, add):
        return None
    lin = linear_of(graph, source, rank)
    if isinstance(lin, str) or not np.issubdtype(bias.dtype, np.floating):
        return None
    return add, lin, index, bias


def _plan_through_bias(graph: gs.Graph, biased: tuple[gs.Node, Linear, int, np.ndarray],
                       reader: gs.Node, node: gs.Node, index: int, c: np.ndarray, uniform: bool
                       ) -> tuple[Linear, np.ndarray, int, np.ndarray] | str:
    """For `node` = affine(Add(linear(x), b)) (`biased` from _bias_of_linear): the Linear,
    its scale s, and the bias Add's new constant b·s + t (per channel, at the output's rank),
    or why it cannot fold."""
    add, lin, bias_index, bias = biased
    if reason := sole_output_reason(graph, add, reader):
        return reason
    if not np.issubdtype(c.dtype, np.floating):
        return f"constant is {c.dtype}, not floating point"
    vectors = [_scale_vector(c, lin, uniform), channel_vector(bias, lin)]
    if reason := next((v for v in vectors if isinstance(v, str)), None):
        return reason
    affine = _affine(node.op, index, vectors[0])
    if isinstance(affine, str):
        return affine
    s, t = affine
    if reason := overflow_reason(lin, s, t):
        return reason
    if lin.channel_axis == 1:  # a convolution's output rank is its weight's
        shape = [1] * lin.out_rank
        shape[1] = lin.channels
    else:
        shape = [1] * (max(bias.ndim, 1) - 1) + [lin.channels]
    with np.errstate(over="ignore", invalid="ignore"):
        new_bias = (vectors[1] * s + t).astype(bias.dtype)
    if not np.all(np.isfinite(new_bias)):
        return f"folding would overflow the bias {add.inputs[bias_index].name} ({bias.dtype})"
    return lin, s, bias_index, new_bias.reshape(shape)


def _affine(op: str, index: int, c: np.ndarray) -> tuple[np.ndarray, np.ndarray] | str:
    """(s, t) such that `op` applied to y and the constant c equals y·s + t."""
    ones, zeros = np.ones_like(c), np.zeros_like(c)
    if op == "Mul":
        return c, zeros
    if op == "Add":
        return ones, c
    if op == "Sub":
        return (ones, -c) if index == 1 else (-ones, c)
    if index == 0:
        return "c / x is not linear in x"
    if np.any(c == 0):
        return "divisor has zeros"
    with np.errstate(over="ignore", divide="ignore"):
        reciprocal = (ones / c).astype(c.dtype)
    if not np.all(np.isfinite(reciprocal)):
        tiny = float(np.min(np.abs(c)))
        return f"divisor {tiny:.4g} has no finite reciprocal in {c.dtype}"
    return reciprocal, zeros


def channel_vector(c: np.ndarray, lin: Linear) -> np.ndarray | str:
    """`c` as a (C,) vector over lin's output channels, or why it does not broadcast as one."""
    rank = lin.out_rank
    if rank is None:
        # Unknown output rank: only shapes that cannot add dimensions are safe.
        rank = max(c.ndim, 1)
        if c.ndim > 1:
            return f"constant shape {c.shape} vs an output of unknown rank"
    if c.ndim > rank:
        return f"constant shape {c.shape} would broadcast the output to a higher rank"
    padded = c.reshape((1,) * (rank - c.ndim) + c.shape)
    axis = 1 if lin.channel_axis == 1 else rank - 1
    others = [d for i, d in enumerate(padded.shape) if i != axis]
    if any(d != 1 for d in others) or padded.shape[axis] not in (1, lin.channels):
        return f"constant shape {c.shape} is not per output channel ({lin.channels})"
    return np.broadcast_to(padded.reshape(-1), (lin.channels,)).copy()
