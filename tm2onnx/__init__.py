"""tm2onnx: export MegEngine TracedModules to ONNX, apply deployment graph surgeries, and check
with onnxruntime that the result computes what MegEngine computes."""

from __future__ import annotations

__version__ = "0.1.0"

from . import _moved  # noqa: F401  (the old flat module paths, as aliases)
from .errors import Tm2OnnxError


def __getattr__(name: str):
    # MegEngine takes seconds to import and prints to stderr: load it only when asked.
    if name in ("export", "load_traced"):
        from .exporting import exporter as _exporter
        return getattr(_exporter, name)
    raise AttributeError(f"module 'tm2onnx' has no attribute {name!r}")


__all__ = ["Tm2OnnxError", "__version__", "export", "load_traced"]
