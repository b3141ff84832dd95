"""Remove dead nodes and initializers, merge identical constants, fold constant subgraphs
(never into a tensor larger than a size limit) and sort nodes topologically."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from . import transform
from .graphops import cleanup as drop_dead
from .graphops import may_fold, toposort
from .patterns import const_array, const_key, constants_in, is_graph_output, replace_uses
from .report import TransformReport, label

# Folding never creates a constant bigger than this or than the largest existing one.
MIN_FOLD_LIMIT = 1 << 20
# Ops whose output can dwarf their inputs; folded only when the result's size is known.
_EXPANDING = frozenset({"ConstantOfShape", "Tile", "Expand"})


@transform("cleanup")
def cleanup(graph: gs.Graph, *, fold: bool = True, max_fold_bytes: int | None = None
            ) -> TransformReport:
    """Remove dead nodes, merge identical constants, fold constant subgraphs (bounded by
    max_fold_bytes, default max(1 MiB, largest constant)) and toposort; refuses nothing."""
    report = TransformReport("cleanup", verb="removed")
    order = [id(n) for n in graph.nodes]
    labels = {id(n): label(n) for n in graph.nodes}
    merged = dedupe_constants(graph)
    dead = cleanup_counting(graph, labels)
    folded: list[str] = []
    # gs's folding copies the graph and starts onnxruntime even when nothing can fold.
    if fold and may_fold(graph):
        limit = max_fold_bytes if max_fold_bytes is not None else default_limit(graph)
        fold_constants(graph, limit)
        folded = cleanup_counting(graph, labels)
        merged += dedupe_constants(graph)  # gs's folding copies what it folds (Identity(W))
    toposort(graph)
    report.rewritten += merged + dead + folded
    if report.rewritten:
        report.note(f"merged {len(merged)} duplicate constants, removed {len(dead)} dead "
                    f"nodes, folded {len(folded)} constant nodes")
    report.modified = order != [id(n) for n in graph.nodes]
    return report


def dedupe_constants(graph: gs.Graph) -> list[str]:
    """Point readers of byte-identical constants (same dtype and shape) at one of them."""
    first: dict[tuple, gs.Constant] = {}
    merged = []
    for const in list(constants_in(graph)):
        if is_graph_output(graph, const):
            continue
        keep = first.setdefault(const_key(const.values), const)
        if keep is not const:
            replace_uses(const, keep)
            merged.append(const.name)
    return merged


def cleanup_counting(graph: gs.Graph, labels: dict[int, str]) -> list[str]:
    """gs's cleanup, returning the labels (taken before folding emptied them) of removed nodes."""
    before = [id(n) for n in graph.nodes]
    drop_dead(graph)
    kept = {id(n) for n in graph.nodes}
    return [labels[key] for key in before if key not in kept]


def default_limit(graph: gs.Graph) -> int:
    largest = max((c.values.nbytes for c in constants_in(graph)), default=0)
    return max(MIN_FOLD_LIMIT, largest)


def fold_constants(graph: gs.Graph, limit: int) -> None:
    """gs's fold_constants, quietly, never creating a constant over `limit` bytes."""
    def too_big(node: gs.Node) -> bool:
        size = expanded_bytes(node)
        return size is None or size > limit

    # gs warns about every node it cannot fold; a deployment log needs only our report.
    level = G_LOGGER.severity
    G_LOGGER.severity = G_LOGGER.ERROR
    try:
        graph.fold_constants(size_threshold=limit, should_exclude_node=lambda n: (
            n.op in _EXPANDING and too_big(n)))
    finally:
        G_LOGGER.severity = level


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """A constant's shape, or a variable's when every dim is a known size; else None."""
    value = const_array(tensor)
    if value is not None:
        return value.shape
    shape = tensor.shape
    if shape is None or any(not isinstance(d, (int, np.integer)) or d < 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _itemsize(tensor: gs.Tensor, default: int = 8) -> int:
    try:
        return np.dtype(tensor.dtype).itemsize
    except TypeError:
        return default


def expanded_bytes(node: gs.Node) -> int | None:
    """Bytes the output of a ConstantOfShape/Tile/Expand would take; None when unknowable
    (ConstantOfShape counts 8 bytes an element: an upper bound for any value type)."""
    if node.op == "ConstantOfShape":
        shape = const_array(node.inputs[0])
        return None if shape is None else int(np.prod(shape, dtype=np.int64)) * 8
    data = static_shape(node.inputs[0])
    arg = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if data is None or arg is None:
        return None
    if node.op == "Tile":
        volume = int(np.prod(data, dtype=np.int64)) * int(np.prod(arg, dtype=np.int64))
    else:
        try:
            volume = int(np.prod(np.broadcast_shapes(data, tuple(int(d) for d in arg))))
        except ValueError:
            return None
    return volume * _itemsize(node.inputs[0])


