"""Rename graph inputs, outputs or any tensor; every name is checked before anything changes."""

from __future__ import annotations

from collections import Counter

import onnx_graphsurgeon as gs

from tm2onnx.errors import TransformError

from . import transform
from .report import TransformReport


@transform("rename")
def rename(graph: gs.Graph, *, mapping: dict[str, str]) -> TransformReport:
    """Rename tensors (graph inputs/outputs included) by `mapping`; refuses when an old name is
    missing or a new name is empty or already used."""
    report = TransformReport("rename", verb="renamed")
    tensors = graph.tensors()
    _check_mapping(mapping, tensors)
    for old, new in mapping.items():
        if old != new:
            tensors[old].name = new
            report.rewrote(f"{old}→{new}")
    report.modified = bool(report.rewritten)
    return report


def _check_mapping(mapping: dict[str, str], tensors: dict[str, gs.Tensor]) -> None:
    # Validate everything first so a refused rename leaves the graph untouched.
    missing = [old for old in mapping if old not in tensors]
    if missing:
        raise TransformError(f"no tensor named {', '.join(map(repr, missing))}",
                             hint="see the names with `tm2onnx where` or Netron")
    empty = [old for old, new in mapping.items() if not new]
    if empty:
        raise TransformError(f"empty new name for {', '.join(map(repr, empty))}")
    news = Counter(new for old, new in mapping.items() if old != new)
    # A name freed by this same mapping may be reused (e.g. swapping two names).
    kept = set(tensors) - {old for old, new in mapping.items() if old != new}
    taken = sorted({new for new in news if new in kept or news[new] > 1})
    if taken:
        raise TransformError(f"new name(s) already used: {', '.join(map(repr, taken))}",
                             hint="pick names not already in the graph")
