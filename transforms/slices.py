"""Consecutive Slices on different axes of one tensor are one multi-axis Slice: slicing axis a
then axis b picks the same elements as slicing both at once (Swin's patch merging, LeViT's
subsampled queries: `x[:, ::2, ::2]`)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .patterns import const_array, detach, is_graph_output, name_maker, nodes_of
from .report import TransformReport


def _params(node: gs.Node, rank: int | None) -> tuple[np.ndarray, ...] | None:
    """(starts, ends, axes >= 0, steps) as int64 when all are constant (axes and steps
    defaulted as ONNX does); None when not constant or a negative axis meets an unknown rank."""
    inputs = list(node.inputs) + [None] * (5 - len(node.inputs))
    starts, ends = const_array(inputs[1]), const_array(inputs[2])
    if starts is None or ends is None or starts.ndim != 1 or starts.shape != ends.shape:
        return None
    axes = (const_array(inputs[3]) if inputs[3] is not None and inputs[3].name
            else np.arange(starts.size))
    steps = (const_array(inputs[4]) if inputs[4] is not None and inputs[4].name
             else np.ones(starts.size, np.int64))
    if axes is None or steps is None or axes.shape != starts.shape or steps.shape != starts.shape:
        return None
    if np.any(axes < 0):
        if rank is None:
            return None
        axes = np.where(axes < 0, axes + rank, axes)
    return tuple(np.asarray(a, np.int64) for a in (starts, ends, axes, steps))


def _rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def merge_slices(graph: gs.Graph, report: TransformReport) -> None:
    """Slice(Slice(x, axes A), axes B) -> Slice(x, axes A + B) when A and B are disjoint and
    every parameter is constant, for each reader of the inner result when all its readers are
    such Slices (Swin's x[:, 0::2, 0::2] ... x[:, 1::2, 1::2] share x[:, 0::2]): the inner
    Slice goes, each reader slicing x itself."""
    fresh = None
    for inner in nodes_of(graph, "Slice"):
        plan = _merges(graph, inner)
        if not plan:
            continue
        fresh = fresh or name_maker(graph)
        source = inner.inputs[0]
        detach(inner)
        for outer, merged in plan:
            labels = ("starts", "ends", "axes", "steps")
            new_inputs = [source, *(gs.Constant(fresh(f"{outer.name}.{what}"), value)
                                    for what, value in zip(labels, merged))]
            for index, tensor in enumerate(new_inputs):
                # Item by item: gs keeps the back-links of a synchronized list that way.
                if index < len(outer.inputs):
                    outer.inputs[index] = tensor
                else:
                    outer.inputs.append(tensor)
        report.rewrote(inner)


def _merges(graph: gs.Graph, inner: gs.Node) -> list[tuple[gs.Node, list[np.ndarray]]]:
    """Each reader of `inner`'s result with its merged parameters; [] unless every reader is
    a Slice of that result on axes disjoint from inner's and the result is no graph output."""
    if len(inner.inputs) < 3 or len(inner.outputs) != 1:
        return []
    result = inner.outputs[0]
    readers = list(result.outputs)
    if not readers or is_graph_output(graph, result):
        return []
    plan = []
    for outer in readers:
        if outer.op != "Slice" or len(outer.inputs) < 3 or outer.inputs[0] is not result or \
                any(t is result for t in outer.inputs[1:]):
            return []
        rank = _rank(inner.inputs[0]) or _rank(result) or _rank(outer.outputs[0])
        first, second = _params(inner, rank), _params(outer, rank)
        if first is None or second is None or set(first[2].tolist()) & set(second[2].tolist()):
            return []
        if len(set(first[2].tolist())) != first[2].size or \
                len(set(second[2].tolist())) != second[2].size:
            return []  # a repeated axis is invalid ONNX: leave it for the checker to name
        plan.append((outer, [np.concatenate([a, b]) for a, b in zip(first, second)]))
    return plan
