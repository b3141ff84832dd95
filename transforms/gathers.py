"""Gathers of constant indices, re-cut: Unsqueeze(Gather(x, i, axis a), a) is Gather(x, [i], a)
(the scalar index drops axis a, the Unsqueeze puts it back); Concat on axis a of Gathers of one
x on axis a is one Gather of the joined indices; a Gather of 0..n-1 on an axis of static size n
is x itself. Detectors assemble shapes as Concat(Unsqueeze(Gather(Shape(t), k)), ...)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .patterns import (
    adopt_outputs,
    axes_of,
    const_array,
    detach,
    is_graph_output,
    name_maker,
    nodes_of,
    producer,
)
from .report import TransformReport


def _rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def _same_axis(a: int, b: int, rank: int | None) -> bool:
    """Axes `a` and `b` of one rank name the same axis (two negatives or two non-negatives
    compare as they are; a mixed pair needs the rank)."""
    if (a < 0) == (b < 0):
        return a == b
    return rank is not None and a % rank == b % rank


def _gather_axis(node: gs.Node) -> int:
    return int(node.attrs.get("axis", 0))


def _unsqueezed_index(unsqueeze: gs.Node, graph: gs.Graph) -> gs.Node | None:
    """The Gather of a constant scalar index whose dropped axis this Unsqueeze restores, when
    that Gather's result is read by this Unsqueeze only."""
    gather = producer(unsqueeze.inputs[0], op="Gather") if unsqueeze.inputs else None
    if gather is None or len(gather.inputs) != 2 or len(gather.outputs) != 1:
        return None
    result = gather.outputs[0]
    if len(result.outputs) != 1 or is_graph_output(graph, result):
        return None
    index, axes = const_array(gather.inputs[1]), axes_of(unsqueeze)
    if index is None or index.ndim != 0 or axes is None or axes.size != 1:
        return None
    return gather if _same_axis(_gather_axis(gather), int(axes.reshape(-1)[0]),
                                _rank(gather.inputs[0])) else None


def unsqueezed_gathers(graph: gs.Graph, report: TransformReport) -> None:
    """Unsqueeze(Gather(x, scalar i, axis a), axes [a]) -> Gather(x, [i], axis a) when the
    Gather's result has no other reader; refuses several axes or a non-constant index."""
    fresh = None
    for unsqueeze in nodes_of(graph, "Unsqueeze"):
        if (gather := _unsqueezed_index(unsqueeze, graph)) is None:
            continue
        fresh = fresh or name_maker(graph)
        index = const_array(gather.inputs[1]).reshape(1)  # the index dtype (int32/int64) kept
        gather.inputs[1] = gs.Constant(fresh(f"{gather.name}_index"), index)
        adopt_outputs(gather, unsqueeze)
        report.rewrote(unsqueeze)


def _index_list(node: gs.Node, source: gs.Tensor, axis: int, graph: gs.Graph,
                concat: gs.Node) -> np.ndarray | None:
    """The 1-D constant indices of a Gather of `source` on `axis` read by `concat` only."""
    if node is None or node.op != "Gather" or len(node.inputs) != 2 or len(node.outputs) != 1:
        return None
    if node.inputs[0] is not source or not _same_axis(_gather_axis(node), axis, _rank(source)):
        return None
    result = node.outputs[0]
    if len(result.outputs) != 1 or result.outputs[0] is not concat or \
            is_graph_output(graph, result):
        return None
    index = const_array(node.inputs[1])
    return index if index is not None and index.ndim == 1 else None


def _runs(concat: gs.Node, graph: gs.Graph) -> list[tuple[int, int, list[np.ndarray]]]:
    """(start, stop, indices) of each stretch of >= 2 Concat inputs that gather one tensor
    along the Concat's axis."""
    axis, runs, position = int(concat.attrs.get("axis", 0)), [], 0
    inputs = list(concat.inputs)
    while position < len(inputs):
        first = producer(inputs[position], op="Gather")
        source = first.inputs[0] if first is not None and first.inputs else None
        stop, pieces = position, []
        while stop < len(inputs):
            index = _index_list(producer(inputs[stop]), source, axis, graph, concat)
            if index is None:
                break
            pieces.append(index)
            stop += 1
        if len(pieces) > 1:
            runs.append((position, stop, pieces))
        position = max(stop, position + 1)
    return runs


def concat_gathers(graph: gs.Graph, report: TransformReport) -> None:
    """Concat(Gather(x, i1, axis a), Gather(x, i2, axis a), ...) on axis a -> Gather(x,
    [*i1, *i2], axis a) for each stretch of such inputs with 1-D constant indices read by the
    Concat only (a whole Concat becomes the Gather)."""
    fresh = None
    for concat in nodes_of(graph, "Concat"):
        for start, stop, pieces in reversed(_runs(concat, graph)):
            fresh = fresh or name_maker(graph)
            first = producer(concat.inputs[start])
            dtype = pieces[0].dtype if all(p.dtype == pieces[0].dtype for p in pieces) \
                else np.int64
            joined = np.concatenate([p.astype(dtype) for p in pieces])
            merged = gs.Variable(fresh(f"{first.outputs[0].name}_joined"))
            gather = gs.Node("Gather", fresh(first.name or "Gather"), dict(first.attrs),
                             [first.inputs[0], gs.Constant(fresh(f"{first.name}_index"), joined)],
                             [merged])
            graph.nodes.append(gather)
            for position, tensor in enumerate(list(concat.inputs[start:stop])):
                if position:  # k Gathers become one: k - 1 removed
                    report.rewrote(tensor.inputs[0])
                detach(tensor.inputs[0])
            # Item by item: gs keeps the back-links of a synchronized list that way.
            for position in range(stop - 1, start, -1):
                del concat.inputs[position]
            concat.inputs[start] = merged


def whole_gather(node: gs.Node) -> bool:
    """Gather of the constant indices 0..n-1 (negatives counted from n) on an axis of static
    size n: every slice once, in order, so the input itself."""
    if len(node.inputs) != 2 or node.inputs[0].shape is None:
        return False
    index, shape = const_array(node.inputs[1]), node.inputs[0].shape
    axis = _gather_axis(node)
    if index is None or index.ndim != 1 or not -len(shape) <= axis < len(shape):
        return False
    size = shape[axis]
    if not isinstance(size, (int, np.integer)) or size < 0 or index.size != size:
        return False
    return bool(np.array_equal(np.where(index < 0, index + size, index), np.arange(size)))
