"""Consecutive Slices on different axes of one tensor are one multi-axis Slice: slicing axis a
then axis b picks the same elements as slicing both at once (Swin's patch merging, LeViT's
subsampled queries: `x[:, ::2, ::2]`)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .patterns import const_array, detach, name_maker, nodes_of, only_consumer, producer
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
    """Slice(Slice(x, axes A), axes B) -> Slice(x, axes A + B) when A and B are disjoint, every
    parameter is constant and the inner result has no other reader."""
    fresh = None
    for outer in nodes_of(graph, "Slice"):
        inner = producer(outer.inputs[0], op="Slice") if len(outer.inputs) >= 3 else None
        if inner is None or len(inner.inputs) < 3 or only_consumer(inner.outputs[0], graph) is None:
            continue
        rank = _rank(inner.inputs[0]) or _rank(inner.outputs[0]) or _rank(outer.outputs[0])
        first, second = _params(inner, rank), _params(outer, rank)
        if first is None or second is None or set(first[2].tolist()) & set(second[2].tolist()):
            continue
        if len(set(first[2].tolist())) != first[2].size or \
                len(set(second[2].tolist())) != second[2].size:
            continue  # a repeated axis is invalid ONNX: leave it for the checker to name
        fresh = fresh or name_maker(graph)
        merged = [np.concatenate([a, b]) for a, b in zip(first, second)]
        labels = ("starts", "ends", "axes", "steps")
        new_inputs = [inner.inputs[0], *(gs.Constant(fresh(f"{outer.name}.{what}"), value)
                                         for what, value in zip(labels, merged))]
        detach(inner)
        for index, tensor in enumerate(new_inputs):
            # Item by item: gs keeps the back-links of a synchronized list that way.
            if index < len(outer.inputs):
                outer.inputs[index] = tensor
            else:
                outer.inputs.append(tensor)
        report.rewrote(inner)
