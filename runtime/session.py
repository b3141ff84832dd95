"""onnxruntime sessions on CPU or CUDA, with a clear error when the CUDA provider is absent."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from tm2onnx.errors import ValidationError

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def make_session(model: onnx.ModelProto | str, *, device: str = "cpu", opt_level: str = "all",
                 threads: int | None = None) -> ort.InferenceSession:
    """An InferenceSession; `opt_level="disable"` keeps onnxruntime from hiding a broken graph."""
    if device not in PROVIDERS:
        raise ValidationError(f"unknown device {device!r}", hint="use 'cpu' or 'cuda'")
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ValidationError("onnxruntime has no CUDAExecutionProvider here",
                              hint="pip install 'tm2onnx[gpu]' (onnxruntime-gpu) on a CUDA machine")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPT_LEVELS[opt_level]
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(source, options, providers=PROVIDERS[device])
    except Exception as err:  # onnxruntime raises several unrelated types
        raise ValidationError(f"onnxruntime cannot load the model: {err}") from err


def run_model(model: onnx.ModelProto | str | ort.InferenceSession, feeds: dict[str, np.ndarray],
              **session_options) -> dict[str, np.ndarray]:
    """Run once and return outputs by name."""
    session = model if isinstance(model, ort.InferenceSession) else make_session(
        model, **session_options)
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))
