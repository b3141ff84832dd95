"""Nearest upsampling written as repeats (`x.repeat(2, axis=2).repeat(2, axis=3)`, exported as
Reshape -> Tile -> Reshape per axis) as the standard op: one nearest Resize with integer
scales per repeated H/W axis, and consecutive ones merged into a single Resize (2x2 in one)."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from . import transform
from .cleanup import static_shape
from .graphio import infer_onto
from .patterns import const_array, detach, name_maker, nodes_of, only_consumer, producer
from .report import TransformReport

NEAREST = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
           "nearest_mode": "floor"}  # out[i] = in[floor(i / r)]: exact for integer scales
FLOATS = {np.dtype(np.float32), np.dtype(np.float16)}
MAX_ELEMENTS = 1 << 24


def repeated_axis(shape: tuple[int, ...], first: np.ndarray, reps: np.ndarray,
                  second: np.ndarray) -> tuple[int, int] | None:
    """(axis, r) when Reshape(first) -> Tile(reps) -> Reshape(second) on a 4-D `shape` is
    np.repeat(x, r, axis) with axis 2 or 3 — proved on an index array, not assumed."""
    if len(shape) != 4 or int(np.prod(shape, dtype=np.int64)) > MAX_ELEMENTS:
        return None
    grown = [int(r) for r in reps.reshape(-1)]
    index = np.arange(int(np.prod(shape, dtype=np.int64))).reshape(shape)
    try:
        dims = [shape[i] if d == 0 else int(d) for i, d in enumerate(first.reshape(-1))]
        tiled = np.tile(index.reshape(dims), grown)
        out = [tiled.shape[i] if d == 0 else int(d) for i, d in enumerate(second.reshape(-1))]
        result = tiled.reshape(out)
    except (ValueError, IndexError):
        return None
    for axis in (2, 3):
        r = result.shape[axis] // shape[axis] if result.ndim == 4 else 0
        if r > 1 and np.array_equal(result, np.repeat(index, r, axis=axis)):
            return axis, r
    return None


def _batch_copied(x: gs.Tensor, first: np.ndarray, reps: np.ndarray,
                  second: np.ndarray) -> tuple[int, ...] | None:
    """A stand-in shape (batch 2) for a symbolic batch that both Reshapes copy (0) and the Tile
    leaves alone: the proof then holds for every batch size."""
    shape = list(x.shape or [])
    if (len(shape) != 4 or not isinstance(shape[0], str)
            or any(not isinstance(d, (int, np.integer)) for d in shape[1:])
            or first.reshape(-1)[:1].tolist() != [0] or second.reshape(-1)[:1].tolist() != [0]
            or reps.reshape(-1)[:1].tolist() != [1]):
        return None
    return (2, *(int(d) for d in shape[1:]))


def _as_resize(node: gs.Node, graph: gs.Graph, fresh) -> bool:
    """Turn the chain ending in Reshape `node` into a Resize; False when it does not match."""
    tile = producer(node.inputs[0], op="Tile")
    first = producer(tile.inputs[0], op="Reshape") if tile is not None else None
    if first is None or only_consumer(tile.outputs[0], graph) is not node or \
            only_consumer(first.outputs[0], graph) is not tile:
        return False
    x = first.inputs[0]
    parts = [const_array(t) for t in (first.inputs[1], tile.inputs[1], node.inputs[1])]
    if any(p is None for p in parts) or x.dtype is None or np.dtype(x.dtype) not in FLOATS:
        return False
    shape = static_shape(x) or _batch_copied(x, *parts)
    if shape is None:
        return False
    found = repeated_axis(shape, *parts)
    if found is None:
        return False
    axis, r = found
    scales = np.ones(4, np.float32)
    scales[axis] = r
    node.op, node.attrs = "Resize", dict(NEAREST)
    node.inputs.clear()  # in place: gs keeps the tensors' back-links in sync
    node.inputs.extend([x, gs.Constant(fresh(f"{node.name}_roi"), np.zeros(0, np.float32)),
                        gs.Constant(fresh(f"{node.name}_scales"), scales)])
    for dead in (tile, first):  # their only reader was this chain: x must not look shared
        detach(dead)
    return True


def _merge_resizes(graph: gs.Graph, fresh) -> int:
    """Resize(nearest, integer scales) read only by another such Resize: one, scales multiplied."""
    merged = 0
    for node in nodes_of(graph, "Resize"):
        inner = producer(node.inputs[0], op="Resize")
        if inner is None or only_consumer(inner.outputs[0], graph) is not node:
            continue
        both = [n.attrs == NEAREST and len(n.inputs) == 3 for n in (node, inner)]
        scales = [const_array(n.inputs[2]) for n in (node, inner)] if all(both) else []
        if not scales or any(s is None or np.any(s != np.round(s)) for s in scales):
            continue
        node.inputs[0] = inner.inputs[0]
        node.inputs[2] = gs.Constant(fresh(f"{node.name}_scales"),
                                     (scales[0] * scales[1]).astype(np.float32))
        merged += 1
    return merged


@transform("repeat-as-resize")
def repeat_as_resize(graph: gs.Graph) -> TransformReport:
    """Repeats along H or W of a 4-D float tensor (Reshape/Tile/Reshape, as `export` writes
    F.repeat) -> nearest Resize with integer scales, consecutive ones merged (2x2 upsampling in
    one op); skips chains whose index proof fails or whose intermediates have other readers."""
    report = TransformReport("repeat-as-resize")
    fresh = None
    candidates = [node for node in nodes_of(graph, "Reshape")
                  if producer(node.inputs[0], op="Tile") is not None]
    if candidates:
        infer_onto(graph)  # the repeated tensors' shapes (a chain's input may be unlabelled)
    for node in candidates:
        fresh = fresh or name_maker(graph)
        if _as_resize(node, graph, fresh):
            report.rewrote(node)
        else:
            report.skip(node, "not a repeat along H/W of a static 4-D float tensor")
    if report.rewritten:
        if merged := _merge_resizes(graph, fresh):
            report.note(f"merged {merged} Resize pairs")
        graph.cleanup().toposort()
    return report
