"""onnxruntime sessions on CPU or CUDA, with a clear error when the CUDA provider is absent;
`run_all` exposes every intermediate tensor as an output (for localization)."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
import onnxruntime as ort

from tm2onnx.errors import RunError, ValidationError

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}
DEVICES = ("cpu", "cuda", "auto")
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def cpu_has_vnni() -> bool | None:
    """Whether this x86 CPU has VNNI (AVX-512 VNNI or AVX-VNNI): without it onnxruntime's U8S8
    int8 kernels add u8*s8 product pairs in int16, which saturates. None when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            flags = next((line.split(":", 1)[1].split() for line in info
                          if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None or "avx2" not in flags:
        return None  # not x86 with AVX2 (ARM, or no /proc): no such saturation known
    return bool({"avx512_vnni", "avx_vnni"} & set(flags))


def resolve_device(device: str) -> str:
    """'auto' is CUDA when onnxruntime has its provider here, else CPU."""
    if device not in DEVICES:
        raise ValidationError(f"unknown device {device!r}", hint="use 'cpu', 'cuda' or 'auto'")
    if device == "auto":
        return "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    return device


def make_session(model: onnx.ModelProto | str | bytes, *, device: str = "cpu", opt_level: str = "all",
                 threads: int | None = None) -> ort.InferenceSession:
    """An InferenceSession; `opt_level="disable"` keeps onnxruntime from hiding a broken graph."""
    device = resolve_device(device)
    if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise ValidationError("onnxruntime has no CUDAExecutionProvider here",
                              hint="pip install 'tm2onnx[gpu]' (onnxruntime-gpu) on a CUDA machine")
    if opt_level not in OPT_LEVELS:
        raise ValidationError(f"unknown optimization level {opt_level!r}",
                              hint=f"use one of {', '.join(OPT_LEVELS)}")
    options = ort.SessionOptions()
    options.graph_optimization_level = OPT_LEVELS[opt_level]
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    try:
        return ort.InferenceSession(source, options, providers=PROVIDERS[device])
    except Exception as err:  # onnxruntime raises several unrelated types
        raise RunError(f"onnxruntime cannot load the model: {_one_line(err)}") from err


def provider(session: ort.InferenceSession) -> str:
    """The provider that runs first: what 'onnxruntime cuda' really means for this session."""
    return session.get_providers()[0]


def run_model(model: onnx.ModelProto | str | ort.InferenceSession, feeds: dict[str, np.ndarray],
              **session_options) -> dict[str, np.ndarray]:
    """Run once and return outputs by name; a runtime failure is a RunError, not a mismatch."""
    session = model if isinstance(model, ort.InferenceSession) else make_session(
        model, **session_options)
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, feeds)))
    except Exception as err:  # onnxruntime's Fail/InvalidArgument/RuntimeException...
        raise RunError(f"onnxruntime failed to run the model: {_one_line(err)}",
                       hint="check the inputs (--inputs, --int-range, --dim)") from err


def run_all(model: onnx.ModelProto, feeds: dict[str, np.ndarray], **session_options
            ) -> dict[str, np.ndarray]:
    """Every intermediate tensor's value from one run (Polygraphy's `--mark all`), graph
    optimizations off by default so that no tensor is fused away."""
    session_options.setdefault("opt_level", "disable")
    names = [name for node in model.graph.node for name in node.output if name]
    return run_model(exposing_session(model, names, **session_options), feeds)


def exposing_session(model: onnx.ModelProto, names: Iterable[str], **session_options
                     ) -> ort.InferenceSession:
    """A session whose outputs are the graph outputs and `names` (intermediate tensors). With
    optimizations on, onnxruntime still fuses Q/DQ pairs into int8 kernels around an exposed
    DequantizeLinear output (it copies the DequantizeLinear), so the values are its kernels'."""
    added = _expose(model, names)
    try:  # the outputs are added and removed in place: a copy of every weight costs seconds
        return make_session(model.SerializeToString(), **session_options)
    finally:
        for _ in range(added):
            model.graph.output.pop()


def _expose(model: onnx.ModelProto, names: Iterable[str]) -> int:
    present = {o.name for o in model.graph.output}
    added = 0
    for name in names:
        if name and name not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
            added += 1
    return added


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."
