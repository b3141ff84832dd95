"""Run ONNX models in onnxruntime and compare their outputs (installs as `tm2onnx.runtime`);
`localize` finds the first tensor where two runs of a model diverge."""

from __future__ import annotations

from .compare import Comparison, OutputDiff, Tolerance, compare
from .inputs import load_inputs, random_feeds
from .session import make_session, run_all, run_model


def __getattr__(name: str):
    # tm2onnx.check.localize imports this package: load it on first use, not at import.
    if name in ("localize", "find_divergence"):
        from tm2onnx.check import localize as _localize
        return getattr(_localize, name)
    raise AttributeError(f"module 'tm2onnx.runtime' has no attribute {name!r}")


__all__ = ["Comparison", "OutputDiff", "Tolerance", "compare", "find_divergence", "load_inputs",
           "localize", "make_session", "random_feeds", "run_all", "run_model"]
