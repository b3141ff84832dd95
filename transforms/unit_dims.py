"""Transposes that only move size-1 dims are Reshapes; a unit-dim Reshape between two Transposes
moves before them. Both leave Reshape/Transpose pairs that fold-shapes then merges (ViT's
attention: 36 nodes)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .cleanup import static_shape
from .patterns import const_array, detach, name_maker, nodes_of, only_consumer, producer
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
    """Transpose(p) -> Reshape that only adds/drops unit dims -> Transpose(r), single readers,
    static shapes: Reshape(x, non-unit dims of x + units) -> one Transpose (3 nodes -> 2)."""
    fresh = None
    for first in nodes_of(graph, "Transpose"):
        reshape = only_consumer(first.outputs[0], graph) if first.outputs else None
        if reshape is None or reshape.op != "Reshape":
            continue
        last = only_consumer(reshape.outputs[0], graph)
        if last is None or last.op != "Transpose" or (perm := _sunk_perm(first, reshape)) is None:
            continue
        shape = static_shape(first.inputs[0])
        units = len(perm) - len(_non_unit(shape))
        target = (*_non_unit(shape), *[1] * units)
        fresh = fresh or name_maker(graph)
        reshape.inputs[0] = first.inputs[0]
        reshape.inputs[1] = gs.Constant(fresh(f"{reshape.name}_shape"), np.array(target, np.int64))
        reshape.outputs[0].shape = list(target)
        last.attrs["perm"] = [perm[int(axis)] for axis in last.attrs["perm"]]
        detach(first)
        report.rewrote(first)


def _sunk_perm(first: gs.Node, reshape: gs.Node) -> list[int] | None:
    """The perm q with Reshape(Transpose(x, p), u) == Transpose(Reshape(x, s'), q), where s' is
    x's non-unit dims then u's unit count of 1s; None unless shapes are static, the Reshape only
    adds/drops unit dims and the last Transpose has a perm of u's rank."""
    shape, perm = static_shape(first.inputs[0]), first.attrs.get("perm")
    mid, out = static_shape(first.outputs[0]), static_shape(reshape.outputs[0])
    last_perm = only_consumer(reshape.outputs[0]).attrs.get("perm")
    if None in (shape, perm, mid, out, last_perm) or 0 in shape or len(last_perm) != len(out):
        return None
    if _non_unit(mid) != _non_unit(out) or len(perm) != len(shape):
        return None
    rank_of = {axis: k for k, axis in enumerate(a for a in range(len(shape)) if shape[a] != 1)}
    sources = iter(int(perm[i]) for i in range(len(mid)) if mid[i] != 1)
    units = iter(range(len(rank_of), len(out)))
    return [rank_of[next(sources)] if d != 1 else next(units) for d in out]
