"""Channel shuffle written with the batch folded into the channels and a 5-D reshape
(ShuffleNetV2: `x.reshape(b*c//g, g, h*w).transpose(1, 0, 2).reshape(g, -1, c//g, h, w)`, then
`x[0], x[1]`) as the 4-D form that keeps the batch: Reshape(b, c/g, g, hw) -> Transpose ->
Reshape(b, c, h, w) -> Split(axis 1). The match is proved, not assumed: both forms are run
on an index array and must pick the same elements for every part."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from . import transform
from .cleanup import static_shape
from .patterns import const_array, consumers, detach, is_graph_output, name_maker, nodes_of
from .report import TransformReport

MAX_ELEMENTS = 1 << 24  # the index proof runs numpy on arrays of x's size


def reshape_to(shape: tuple[int, ...], target: np.ndarray) -> tuple[int, ...] | None:
    """ONNX Reshape's output shape (0 copies the input dim, one -1 is inferred); None when
    the target does not fit."""
    dims = [shape[i] if d == 0 and i < len(shape) else int(d) for i, d in enumerate(target)]
    total, known = int(np.prod(shape, dtype=np.int64)), int(np.prod([d for d in dims if d != -1]))
    if dims.count(-1) == 1 and known and total % known == 0:
        dims[dims.index(-1)] = total // known
    if dims.count(-1) or int(np.prod(dims, dtype=np.int64)) != total:
        return None
    return tuple(dims)


def _parts(node: gs.Node, graph: gs.Graph) -> list[tuple[int, gs.Tensor, list[gs.Node]]] | None:
    """(index k, the tensor holding y[k], the nodes computing it) for every reader of the 5-D
    Reshape output y: each a Gather(axis 0) of one constant index, squeezed if 1-D."""
    y = node.outputs[0]
    if is_graph_output(graph, y):
        return None
    parts = []
    for gather in consumers(y):
        index = const_array(gather.inputs[1]) if len(gather.inputs) == 2 else None
        if (gather.op != "Gather" or gather.inputs[0] is not y or index is None
                or int(gather.attrs.get("axis", 0)) != 0 or index.size != 1):
            return None
        out, nodes = gather.outputs[0], [gather]
        if index.ndim == 1:
            squeeze = consumers(out)
            axes = const_array(squeeze[0].inputs[1]) if squeeze and len(squeeze[0].inputs) > 1 \
                else None
            if (len(squeeze) != 1 or squeeze[0].op != "Squeeze" or is_graph_output(graph, out)
                    or axes is None or axes.reshape(-1).tolist() != [0]):
                return None
            out, nodes = squeeze[0].outputs[0], [gather, squeeze[0]]
        parts.append((int(index.reshape(-1)[0]), out, nodes))
    return parts


def _shuffle_of(node: gs.Node, graph: gs.Graph) -> tuple | None:
    """(x, first Reshape, Transpose, groups) when `node` is the 5-D Reshape of the pattern."""
    transpose = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
    if transpose is None or transpose.op != "Transpose" or len(transpose.outputs[0].outputs) != 1:
        return None
    first = transpose.inputs[0].inputs[0] if transpose.inputs[0].inputs else None
    if first is None or first.op != "Reshape" or len(first.outputs[0].outputs) != 1:
        return None
    return first.inputs[0], first, transpose


def _proved(shape: tuple[int, ...], first: np.ndarray, perm: list[int], second: np.ndarray,
            ks: list[int]) -> int | None:
    """The group count g when the folded form's y[k] equals part k of the 4-D shuffle."""
    if len(shape) < 3 or int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
        return None
    s1 = reshape_to(shape, first)
    s2 = reshape_to(s1, second) if s1 is not None and len(perm) == len(s1) else None
    if s2 is None:
        return None
    groups, (batch, channels) = s2[0], shape[:2]
    if groups < 2 or channels % groups or any(not 0 <= k < groups for k in ks):
        return None
    index = np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)
    folded = index.reshape(s1).transpose(perm).reshape(s2)
    kept = index.reshape(batch, channels // groups, groups, -1).transpose(0, 2, 1, 3)
    kept = kept.reshape(shape)
    width = channels // groups
    same = all(np.array_equal(folded[k], kept[:, k * width:(k + 1) * width]) for k in ks)
    return groups if same else None


def _rewrite(graph: gs.Graph, fresh, x: gs.Tensor, shape: tuple[int, ...], groups: int,
             parts: list, base: str) -> None:
    batch, channels = shape[:2]
    width, spatial = channels // groups, int(np.prod(shape[2:], dtype=np.int64))
    grouped = gs.Variable(fresh(f"{base}/grouped"), dtype=x.dtype,
                          shape=[batch, width, groups, spatial])
    swapped = gs.Variable(fresh(f"{base}/swapped"), dtype=x.dtype,
                          shape=[batch, groups, width, spatial])
    merged = gs.Variable(fresh(f"{base}/merged"), dtype=x.dtype, shape=list(shape))
    outputs = [gs.Variable(fresh(f"{base}/part{k}"), dtype=x.dtype,
                           shape=[batch, width, *shape[2:]]) for k in range(groups)]
    taken: set[int] = set()
    for k, out, nodes in parts:  # the first reader of part k takes over its tensor (names,
        for old in nodes:        # graph outputs and traced-shape checks stay with it)
            detach(old)
        if k in taken:
            graph.nodes.append(gs.Node("Identity", name=fresh(f"{base}/same{k}"),
                                       inputs=[outputs[k]], outputs=[out]))
        else:
            taken.add(k)
            outputs[k] = out
    const = [gs.Constant(fresh(f"{base}/{n}"), np.asarray(v, np.int64)) for n, v in
             (("grouped_shape", [batch, width, groups, spatial]), ("shape", list(shape)),
              ("split", [width] * groups))]
    graph.nodes += [
        gs.Node("Reshape", name=fresh(f"{base}/Reshape"), inputs=[x, const[0]],
                outputs=[grouped]),
        gs.Node("Transpose", name=fresh(f"{base}/Transpose"), attrs={"perm": [0, 2, 1, 3]},
                inputs=[grouped], outputs=[swapped]),
        gs.Node("Reshape", name=fresh(f"{base}/Reshape4d"), inputs=[swapped, const[1]],
                outputs=[merged]),
        gs.Node("Split", name=fresh(f"{base}/Split"), attrs={"axis": 1},
                inputs=[merged, const[2]], outputs=outputs)]


@transform("shuffle-4d")
def shuffle_4d(graph: gs.Graph) -> TransformReport:
    """Channel shuffle with the batch folded into a 5-D Reshape/Transpose/Reshape/Gather
    (ShuffleNetV2) -> Reshape/Transpose/Reshape at rank 4 keeping the batch + Split(axis 1);
    skips (with the reason) unless shapes are static and an index proof matches."""
    report = TransformReport("shuffle-4d")
    fresh = None
    for node in nodes_of(graph, "Reshape"):
        target = const_array(node.inputs[1]) if len(node.inputs) == 2 else None
        if target is None or target.size != 5 or not node.outputs[0].outputs:
            continue
        found = _shuffle_of(node, graph)
        parts = _parts(node, graph) if found else None
        if found is None or parts is None:
            report.skip(node, "not a channel shuffle read by Gather(axis 0) per group")
            continue
        x, first, transpose = found
        shape, first_target = static_shape(x), const_array(first.inputs[1])
        perm = [int(p) for p in transpose.attrs.get("perm", [])]
        groups = (_proved(shape, first_target, perm, target, [k for k, *_ in parts])
                  if shape is not None and first_target is not None else None)
        if groups is None:
            report.skip(node, "static shapes needed, and the 4-D shuffle must select the "
                              "same elements (index proof failed)")
            continue
        fresh = fresh or name_maker(graph)
        _rewrite(graph, fresh, x, shape, groups, parts, node.name or "shuffle")
        report.rewrote(node)
    if report.rewritten:
        graph.cleanup().toposort()
    return report
