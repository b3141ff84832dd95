"""Run ONNX models in onnxruntime and compare their outputs (installs as `tm2onnx.runtime`)."""

from __future__ import annotations

from .compare import Comparison, OutputDiff, compare
from .inputs import random_feeds
from .session import make_session, run_model

__all__ = ["Comparison", "OutputDiff", "compare", "make_session", "random_feeds", "run_model"]
