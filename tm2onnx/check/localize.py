"""Localization in the style of Polygraphy's `--mark all`: run each side once with every
intermediate kept, match tensors by the names the exporter gives them, and report, in
topological order, the first tensor whose error exceeds the tolerance *and* clearly exceeds
the error carried in by its inputs (so drift that merely accumulates is not blamed on a layer)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from ..runtime.compare import DEFAULT_ATOL_SCALE, DEFAULT_RTOL, Tolerance, diff_arrays
from ..runtime.inputs import random_feeds
from ..runtime.session import run_all
from .localize_report import Localization, TensorError, summary

# An error "clearly exceeds" its inputs' when it is this many times larger (scale-free):
# fp32 reordering noise grows by small factors per layer; a wrong weight or op jumps by orders.
GROWTH = 10.0


def localize(model: onnx.ModelProto, reference: Any, *, feeds: dict[str, np.ndarray] | None = None,
             seed: int = 0, dims: dict[str, int] | None = None,
             int_range: tuple[int, int] | None = None, device: str = "cpu",
             reference_device: str = "cpu", rtol: float = DEFAULT_RTOL, atol: float | None = None,
             atol_scale: float = DEFAULT_ATOL_SCALE, subject: str = "model.onnx",
             reference_name: str = "reference") -> Localization:
    """Find the first diverging tensor of `model` against `reference`: a TracedModule
    (MegEngine, interpreted expr by expr) or another onnx.ModelProto (tensors both keep)."""
    feeds = feeds if feeds is not None else random_feeds(model, seed=seed, dims=dims,
                                                         int_range=int_range)
    got = run_all(model, feeds, device=device)
    origins: dict[str, Any] = {}
    if isinstance(reference, onnx.ModelProto):
        ref_inputs = [v.name for v in reference.graph.input
                      if v.name not in {i.name for i in reference.graph.initializer}]
        ref = run_all(reference, dict(zip(ref_inputs, feeds.values())), device=reference_device)
        outputs = [ref[o.name] for o in reference.graph.output]
    else:
        from ..runtime.megengine_ref import run_traced_all

        ref, traced_origins, outputs = run_traced_all(reference, list(feeds.values()))
        origins = {name: vars(origin) for name, origin in traced_origins.items()}
    # Outputs match by position (renamed ones too), graph inputs are the same feeds: a
    # difference in the outputs is always seen, at the latest at the output itself.
    ref.update(zip((o.name for o in model.graph.output), outputs))
    ref.update(feeds)
    got.update(feeds)
    return find_divergence(model, ref, got, Tolerance(rtol, atol, atol_scale), origins=origins,
                           subject=subject, reference_name=reference_name)


def find_divergence(model: onnx.ModelProto, reference: dict[str, np.ndarray],
                    actual: dict[str, np.ndarray], tolerance: Tolerance, *,
                    origins: dict[str, dict[str, str]] | None = None, subject: str = "model.onnx",
                    reference_name: str = "reference") -> Localization:
    """The search itself, on values already computed (`model` gives the topological order)."""
    origins = origins or {}
    cache: dict[str, Any] = {}
    carried: dict[str, float] = {}   # scale-free error reaching each tensor
    graph_inputs = {v.name for v in model.graph.input}
    tensors: list[TensorError] = []
    first: TensorError | None = None
    beyond: TensorError | None = None
    for name in graph_inputs:
        carried[name], cache[name] = 0.0, _diff(name, reference, actual, tolerance)
    for node in model.graph.node:
        input_error = max((carried.get(name, 0.0) for name in node.input if name), default=0.0)
        for name in node.output:
            diff = cache[name] = _diff(name, reference, actual, tolerance)
            if diff is None:
                carried[name] = input_error
                continue
            carried[name] = diff.rel_error
            found = TensorError(diff, node.name, node.op_type, input_error,
                                _input_summaries(node, cache, carried),
                                _metadata(node), origins.get(name, {}))
            tensors.append(found)
            if not diff.passed and beyond is None:
                beyond = found
            if not diff.passed and first is None and diff.rel_error > GROWTH * input_error:
                first = found
    accumulated = first is None and beyond is not None
    return Localization(subject, reference_name, tolerance, tuple(tensors), first or beyond,
                        accumulated, sum(len(n.output) for n in model.graph.node))


def _diff(name: str, reference: dict, actual: dict, tolerance: Tolerance):
    ref, got = reference.get(name), actual.get(name)
    if ref is None or got is None or np.shape(ref) != np.shape(got):
        return None
    ref, got = np.asarray(ref), np.asarray(got)
    if not (np.issubdtype(ref.dtype, np.number) or ref.dtype == np.bool_):
        return None
    return diff_arrays(name, ref, got, tolerance, detail=False)


def _input_summaries(node: onnx.NodeProto, diffs: dict[str, Any], carried: dict[str, float]
                     ) -> tuple[tuple[str, str], ...]:
    rows = []
    for name in node.input:
        if not name:
            continue
        diff = diffs.get(name)
        if diff is not None:
            status = "ok" if diff.passed else "beyond tolerance"
            rows.append((name, f"{summary(diff)}  {status}"))
        elif name in carried:
            carried_in = f"{carried[name]:.3g} x max|ref|"
            rows.append((name, f"not on the reference side; error reaching it {carried_in}"))
        else:
            rows.append((name, "initializer"))
    return tuple(rows)


def _metadata(node: onnx.NodeProto) -> dict[str, str]:
    return {entry.key: entry.value for entry in node.metadata_props}
