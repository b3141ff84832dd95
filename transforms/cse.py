"""Common-subexpression elimination: a node computing what an earlier node already computed
(same op, attributes and inputs) is dropped and its readers use the earlier outputs."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np
import onnx_graphsurgeon as gs

from . import transform
from .graphops import cleanup as drop_dead
from .graphops import toposort
from .patterns import const_array, const_key, detach, is_graph_output, replace_uses
from .report import TransformReport

# Ops whose two runs on the same inputs may differ: never merged.
NONDETERMINISTIC = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform",
                              "RandomUniformLike", "Multinomial", "Bernoulli", "Dropout"})
# Constants up to this many elements are compared by value, larger ones by identity (hashing
# every weight each pass costs more than fold-shapes' dedupe, which merges them anyway).
VALUE_KEY_ELEMENTS = 4096


@transform("cse")
def cse(graph: gs.Graph) -> TransformReport:
    """Merge duplicate nodes (same standard-domain op, attributes and inputs; random ops and
    subgraph ops never), keeping the first; duplicates writing a graph output stay."""
    report = TransformReport("cse", verb="removed")
    merge_duplicates(graph, report)
    if report.rewritten:
        drop_dead(graph)
    return report


def merge_duplicates(graph: gs.Graph, report: TransformReport) -> None:
    """One pass in topological order, so a merge makes the nodes reading it duplicates too."""
    seen: dict[Hashable, gs.Node] = {}
    for node in list(toposort(graph).nodes):
        if (key := _node_key(node)) is None:
            continue
        first = seen.setdefault(key, node)
        if first is node or any(is_graph_output(graph, out) for out in node.outputs):
            continue
        for old, new in zip(list(node.outputs), list(first.outputs)):
            replace_uses(old, new)
        detach(node)
        report.rewrote(node)


def _node_key(node: gs.Node) -> Hashable | None:
    if node.op in NONDETERMINISTIC or node.domain not in (None, "", "ai.onnx") or not node.outputs:
        return None
    attrs = []
    for name, value in sorted(node.attrs.items()):
        if isinstance(value, gs.Graph) or (isinstance(value, list) and any(
                isinstance(item, gs.Graph) for item in value)):
            return None  # If/Loop/Scan: bodies are not compared
        attrs.append((name, _value_key(value)))
    inputs = tuple(_tensor_key(tensor) for tensor in node.inputs)
    return node.op, tuple(attrs), inputs, len(node.outputs)


def _tensor_key(tensor: gs.Tensor) -> Hashable:
    # Checked before the empty-name rule: a Constant node's `value` attribute is an unnamed
    # gs.Constant, and keying it as "" made every Constant node a duplicate of the first.
    if isinstance(tensor, gs.Constant):
        value = const_array(tensor)
        return const_key(value) if value.size <= VALUE_KEY_ELEMENTS else id(tensor)
    if not tensor.name:
        return ""  # an omitted optional input
    return id(tensor)


def _value_key(value: object) -> Hashable:
    if isinstance(value, gs.Constant):
        return _tensor_key(value)
    if isinstance(value, np.ndarray):
        return const_key(value)
    if isinstance(value, (list, tuple)):
        return tuple(_value_key(item) for item in value)
    return value if isinstance(value, Hashable) else repr(value)
