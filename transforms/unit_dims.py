"""Transposes that only move size-1 dims are Reshapes; a splitting Reshape between two
Transposes moves before them. Both leave Reshape/Transpose pairs that fold-shapes then merges
(ViT's attention, EfficientViT's windows); so does a Flatten beside a Reshape. An Unsqueeze
that restores the size-1 dims a Squeeze just dropped undoes it (Split -> Squeeze -> Unsqueeze
in detectors' box decoding)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .cleanup import static_shape
from .patterns import (
    axes_of,
    const_array,
    detach,
    is_graph_output,
    name_maker,
    nodes_of,
    only_consumer,
    producer,
    replace_uses,
)
from .report import TransformReport


def _non_unit(shape: tuple[int, ...]) -> list[int]:
    return [d for d in shape if d != 1]


def _moves_only_units(node: gs.Node) -> tuple[int, ...] | None:
    """The output shape when this Transpose keeps the non-unit dims in their order (a copy-free
    relabelling, i.e. a Reshape); else None."""
    perm = node.attrs.get("perm")
    shape = static_shape(node.inputs[0]) if node.inputs else None
    out = static_shape(node.outputs[0]) if node.outputs else None
    if perm is None or shape is None or out is None or len(perm) != len(shape):
        return None
    moved = [int(axis) for axis in perm if shape[int(axis)] != 1]
    return out if moved == sorted(moved) and 0 not in shape else None


def copies_through(target: np.ndarray, inner: gs.Node) -> bool:
    """Each 0 ("copy the input's dim") in a Reshape `target` applied to `inner`'s result sits
    where `inner`, a Reshape with a constant target and allowzero=0, copied x's own dim: so
    the same target applied to x copies the same dim."""
    zeros = np.flatnonzero(np.asarray(target).reshape(-1) == 0)
    if zeros.size == 0:
        return True
    if inner.attrs.get("allowzero", 0) or len(inner.inputs) < 2:
        return False
    copied = const_array(inner.inputs[1])
    return copied is not None and all(p < copied.size and copied.reshape(-1)[p] == 0
                                      for p in zeros)


def _flatten_target(node: gs.Node) -> np.ndarray | None:
    """The Reshape target equal to this Flatten: [rows, cols] as static sizes, rows 0 (copy)
    for axis 1 and cols -1 when rows is a known positive size; None otherwise."""
    shape = node.inputs[0].shape if node.inputs else None
    if shape is None:
        return None
    axis = int(node.attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis <= len(shape):
        return None
    def size(dims) -> int | None:
        return int(np.prod(dims, dtype=np.int64)) if all(
            isinstance(d, (int, np.integer)) and d >= 0 for d in dims) else None
    rows, cols = size(shape[:axis]), size(shape[axis:])
    if rows is None and axis == 1:
        rows = 0
    if cols is None and rows is not None and rows > 0:
        cols = -1
    return None if rows is None or cols is None else np.array([rows, cols], np.int64)


def flattens_as_reshapes(graph: gs.Graph, report: TransformReport) -> None:
    """Flatten(x) -> Reshape(x, its target) where a neighbouring Reshape then absorbs it (its
    sole-reader producer, or its sole reader with a constant target), so the count drops."""
    fresh = None
    for node in nodes_of(graph, "Flatten"):
        if (target := _flatten_target(node)) is None:
            continue
        inner = producer(node.inputs[0], op="Reshape")
        outer = only_consumer(node.outputs[0], graph)
        merges_inner = inner is not None and only_consumer(inner.outputs[0], graph) is node \
            and copies_through(target, inner)
        outer_target = const_array(outer.inputs[1]) if outer is not None and \
            outer.op == "Reshape" and len(outer.inputs) > 1 else None
        merges_outer = outer_target is not None and (bool(outer.attrs.get("allowzero")) or all(
            p < 2 and target[p] == 0 for p in np.flatnonzero(outer_target.reshape(-1) == 0)))
        if not (merges_inner or merges_outer):
            continue
        fresh = fresh or name_maker(graph)
        node.op, node.attrs = "Reshape", {}
        node.inputs.append(gs.Constant(fresh(f"{node.name}_shape"), target))


def _merges_with_reshape(node: gs.Node, graph: gs.Graph) -> bool:
    """A Reshape writes this node's only input and reads nothing else, or this node's only
    reader is a Reshape to a constant without copied (0) dims: merge_reshapes will fold it."""
    inner = producer(node.inputs[0], op="Reshape")
    if inner is not None and only_consumer(inner.outputs[0], graph) is node:
        return True
    outer = only_consumer(node.outputs[0], graph)
    if outer is None or outer.op != "Reshape" or len(outer.inputs) < 2:
        return False
    target = const_array(outer.inputs[1])
    return target is not None and (not np.any(target == 0) or bool(outer.attrs.get("allowzero")))


def transposes_as_reshapes(graph: gs.Graph, report: TransformReport) -> None:
    """Transpose(x) that only moves unit dims -> Reshape(x, its static output shape), where a
    neighbouring Reshape then absorbs it (so the node count drops, never just trades)."""
    fresh = None
    for node in nodes_of(graph, "Transpose"):
        if (out := _moves_only_units(node)) is None or not _merges_with_reshape(node, graph):
            continue
        fresh = fresh or name_maker(graph)
        node.op, node.attrs = "Reshape", {}
        node.inputs.append(gs.Constant(fresh(f"{node.name}_shape"), np.array(out, np.int64)))


def reshapes_before_transposes(graph: gs.Graph, report: TransformReport) -> None:
    """Transpose(p) -> Reshape that only splits dims / adds or drops unit dims -> Transpose(r),
    single readers, static shapes: Reshape(x, the split in x's order) -> one Transpose (3 -> 2;
    window partitions and attention heads)."""
    fresh = None
    for first in nodes_of(graph, "Transpose"):
        reshape = only_consumer(first.outputs[0], graph) if first.outputs else None
        if reshape is None or reshape.op != "Reshape":
            continue
        last = only_consumer(reshape.outputs[0], graph)
        if last is None or last.op != "Transpose" or (sunk := _sunk_split(first, reshape)) is None:
            continue
        target, perm = sunk
        fresh = fresh or name_maker(graph)
        reshape.inputs[0] = first.inputs[0]
        reshape.inputs[1] = gs.Constant(fresh(f"{reshape.name}_shape"), np.array(target, np.int64))
        reshape.outputs[0].shape = list(target)
        last.attrs["perm"] = [perm[int(axis)] for axis in last.attrs["perm"]]
        detach(first)
        report.rewrote(first)


def _sunk_split(first: gs.Node, reshape: gs.Node) -> tuple[list[int], list[int]] | None:
    """(s', q) with Reshape(Transpose(x, p), u) == Transpose(Reshape(x, s'), q): s' splits each
    non-unit axis of x into the run of u's non-unit dims it became (units appended). None
    unless shapes are static, u refines the transposed shape and the last perm has u's rank."""
    shape, perm = static_shape(first.inputs[0]), first.attrs.get("perm")
    mid, out = static_shape(first.outputs[0]), static_shape(reshape.outputs[0])
    last_perm = only_consumer(reshape.outputs[0]).attrs.get("perm")
    if None in (shape, perm, mid, out, last_perm) or 0 in shape or len(last_perm) != len(out):
        return None
    if len(perm) != len(shape) or (groups := _split_groups(perm, mid, out)) is None:
        return None
    order = [j for axis in sorted(groups) for j in groups[axis]]  # u's dims in x's order
    where = {j: k for k, j in enumerate(order)}
    units = iter(range(len(order), len(out)))
    perm_q = [where[j] if out[j] != 1 else next(units) for j in range(len(out))]
    return [out[j] for j in order] + [1] * (len(out) - len(order)), perm_q


def _split_groups(perm, mid: tuple[int, ...], out: tuple[int, ...]) -> dict[int, list[int]] | None:
    """Source axis -> the positions of u's non-unit dims whose product is that axis's size, runs
    taken in order; None when u's non-unit dims do not split the transposed ones that way."""
    positions = iter(j for j in range(len(out)) if out[j] != 1)
    groups: dict[int, list[int]] = {}
    for axis, size in ((int(perm[i]), mid[i]) for i in range(len(mid)) if mid[i] != 1):
        members, product = [], 1
        while product < size and (j := next(positions, None)) is not None:
            members.append(j)
            product *= out[j]
        if product != size:
            return None
        groups[axis] = members
    return groups if next(positions, None) is None else None


def _undone_squeeze(unsqueeze: gs.Node, graph: gs.Graph) -> gs.Node | None:
    """The Squeeze whose dropped axes, each of static size 1, this Unsqueeze restores (axes
    compared at the one rank both name: the Squeeze's input's); it has no other reader."""
    squeeze = producer(unsqueeze.inputs[0], op="Squeeze") if unsqueeze.inputs else None
    if squeeze is None or only_consumer(squeeze.outputs[0], graph) is not unsqueeze:
        return None
    shape = squeeze.inputs[0].shape
    dropped, restored = axes_of(squeeze), axes_of(unsqueeze)
    if shape is None or dropped is None or restored is None or dropped.size == 0:
        return None
    rank = len(shape)
    if not all(-rank <= int(a) < rank for a in (*dropped.reshape(-1), *restored.reshape(-1))):
        return None
    dropped, restored = sorted(int(a) % rank for a in dropped.reshape(-1)), \
        sorted(int(a) % rank for a in restored.reshape(-1))
    if dropped != restored or any(shape[a] != 1 for a in dropped):
        return None
    return squeeze


def squeezes_undone(graph: gs.Graph, report: TransformReport) -> None:
    """Unsqueeze(Squeeze(x, axes A), axes A) -> x when every axis in A is statically 1 in x and
    the Squeeze has no other reader; refuses when the Unsqueeze writes a graph output that x,
    a graph input, output or constant, cannot be renamed to."""
    for unsqueeze in nodes_of(graph, "Unsqueeze"):
        if (squeeze := _undone_squeeze(unsqueeze, graph)) is None:
            continue
        source, result = squeeze.inputs[0], unsqueeze.outputs[0]
        writer = producer(source)
        if is_graph_output(graph, result) and (writer is None or is_graph_output(graph, source)
                                               or any(t is source for t in graph.inputs)):
            report.skip(unsqueeze, "its output is a graph output fed by an input, constant or "
                        "other output")
            continue
        detach(unsqueeze)
        detach(squeeze)
        if is_graph_output(graph, result):  # x's writer writes the output, its name kept
            replace_uses(source, result)
            index = next(i for i, t in enumerate(writer.outputs) if t is source)
            writer.outputs[index] = result
        else:
            replace_uses(result, source)
        report.rewrote(squeeze)
        report.rewrote(unsqueeze)
