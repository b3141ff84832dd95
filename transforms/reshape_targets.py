"""Reshape targets built from the shapes of other tensors (`Concat(Gather(Shape(t), k), ...)`)
become constants when every dim that is not constant is, by its inferred symbol, the dim the
Reshape's own input has at that position: that entry is 0 ("copy the input's dim"). Detectors
compute such targets once per pyramid level from data-dependent sizes (NonZero, TopK); as
constants the chains go and the Reshapes become equal for CSE."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .patterns import const_array, name_maker, nodes_of, producer
from .report import TransformReport

Dim = int | str | None  # an inferred dim: a size, a symbol, or unknown


def _shape_dims(node: gs.Node) -> list[Dim] | None:
    """The dims a Shape node reads (its start/end attributes applied), or None."""
    shape = node.inputs[0].shape if node.inputs else None
    if shape is None:
        return None
    rank = len(shape)
    start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
    end = rank if end is None else int(end)
    return list(shape)[slice(start + rank if start < 0 else start, end + rank if end < 0 else end)]


def _piece_dims(tensor: gs.Tensor) -> list[Dim] | None:
    """What a 1-D int64 piece of a target holds, as dims: constants as ints, dims read through
    Shape [-> Gather of constant indices] [-> Unsqueeze to 1-D] as the read tensor's inferred
    dims; None for anything else."""
    if (value := const_array(tensor)) is not None:
        return [int(v) for v in value.reshape(-1)] if value.ndim <= 1 else None
    node = producer(tensor)
    if node is not None and node.op == "Unsqueeze":
        axes = (const_array(node.inputs[1]) if len(node.inputs) > 1
                else np.asarray(node.attrs.get("axes", [])))
        if axes is None or axes.reshape(-1).tolist() not in ([0], [-1]):
            return None
        node = producer(node.inputs[0])
    if node is None:
        return None
    if node.op == "Shape":
        return _shape_dims(node)
    if node.op != "Gather" or int(node.attrs.get("axis", 0)) != 0:
        return None
    source, indices = producer(node.inputs[0], op="Shape"), const_array(node.inputs[1])
    dims = _shape_dims(source) if source is not None else None
    if dims is None or indices is None or indices.ndim > 1:
        return None
    picked = [int(i) + len(dims) if int(i) < 0 else int(i) for i in indices.reshape(-1)]
    return [dims[i] for i in picked] if all(0 <= i < len(dims) for i in picked) else None


def _known(dim: Dim) -> bool:
    return isinstance(dim, int) and dim >= 0 or isinstance(dim, str) and bool(dim)


def _pinned_target(reshape: gs.Node) -> np.ndarray | None:
    """The constant equal to this Reshape's Concat target, or None when some entry is neither
    a constant nor the input's own dim at that position."""
    concat = producer(reshape.inputs[1], op="Concat")
    in_shape = reshape.inputs[0].shape
    if concat is None or int(concat.attrs.get("axis", 0)) not in (0, -1) or in_shape is None:
        return None
    entries: list[int] = []
    for piece in concat.inputs:
        if (dims := _piece_dims(piece)) is None:
            return None
        derived = const_array(piece) is None
        for dim in dims:
            position = len(entries)
            if isinstance(dim, int):  # a constant, or a size inference pinned: the value itself
                entries.append(dim)
            elif derived and _known(dim) and position < len(in_shape) and dim == in_shape[position]:
                entries.append(0)
            else:
                return None
    return np.array(entries, np.int64)


def pin_reshape_targets(graph: gs.Graph, report: TransformReport) -> None:
    """Reshape(x, Concat(Shape-derived dims, constants)) -> Reshape(x, constant) where each
    Shape-derived dim is x's own dim at its position (so 0, copied) or inferred static;
    skips allowzero=1 (there 0 means an empty dim)."""
    fresh = None
    for reshape in nodes_of(graph, "Reshape"):
        if len(reshape.inputs) < 2 or reshape.attrs.get("allowzero", 0):
            continue
        if const_array(reshape.inputs[1]) is not None:
            continue
        if (target := _pinned_target(reshape)) is None:
            continue
        fresh = fresh or name_maker(graph)
        reshape.inputs[1] = gs.Constant(fresh(f"{reshape.name}_target"), target)
        report.rewrote(reshape)


def static_copied_dims(graph: gs.Graph) -> None:
    """A constant Reshape target's 0 ("copy the input's dim") becomes that dim's size once
    inference knows it: targets pinned while a size was still symbolic turn fully static, so
    the Reshape merges that refuse copied dims apply again."""
    fresh = None
    for reshape in nodes_of(graph, "Reshape"):
        if len(reshape.inputs) < 2 or reshape.attrs.get("allowzero", 0):
            continue
        target, shape = const_array(reshape.inputs[1]), reshape.inputs[0].shape
        if target is None or shape is None or target.ndim != 1 or not np.any(target == 0):
            continue
        copied = np.flatnonzero(target == 0)
        if copied.max() >= len(shape) or not all(isinstance(shape[i], int) for i in copied):
            continue
        fresh = fresh or name_maker(graph)
        static = target.astype(np.int64)  # a copy: the constant may be shared with others
        static[copied] = [shape[i] for i in copied]
        reshape.inputs[1] = gs.Constant(fresh(f"{reshape.name}_target"), static)
