"""One place for the numeric checks every test uses: parse ONNX text, run onnxruntime with
graph optimizations disabled, and assert outputs match at a named tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.parser

from tm2onnx.runtime import compare, random_feeds, run_model

FP32 = {"rtol": 1e-4, "atol": 1e-5}
FP16 = {"rtol": 1e-2, "atol": 5e-2}
ORT_IR_VERSION = 10


def parse_model(text: str, *, ir_version: int = ORT_IR_VERSION) -> onnx.ModelProto:
    """An ONNX model from onnx.parser text, checked, with an IR version onnxruntime accepts."""
    model = onnx.parser.parse_model(text)
    model.ir_version = ir_version
    onnx.checker.check_model(model, full_check=True)
    return model


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs with onnxruntime's graph optimizations off, so a broken rewrite cannot hide."""
    return run_model(model, feeds, opt_level="disable")


def ops(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def assert_matches(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], *,
                   rtol: float, atol: float) -> None:
    result = compare(reference, actual, rtol=rtol, atol=atol)
    assert result, f"outputs differ:\n{result}"


def assert_same_function(before: onnx.ModelProto, after: onnx.ModelProto, *, rtol: float,
                         atol: float, seed: int = 0, names: dict[str, str] | None = None) -> None:
    """Both models on the same seeded feeds give the same outputs (names may be remapped)."""
    feeds = random_feeds(before, seed=seed)
    result = compare(run_ort(before, feeds), run_ort(after, feeds), rtol=rtol, atol=atol,
                     names=names)
    assert result, f"outputs differ:\n{result}"


_TEXT_TYPES = {"float32": "float", "float64": "double", "int64": "int64", "int32": "int32"}


def init_text(name: str, array: np.ndarray) -> str:
    """An onnx.parser initializer declaration (`float[2,3] w = {...}`) holding `array` exactly,
    so tests can put seeded random weights into parse_model text."""
    kind = _TEXT_TYPES[np.asarray(array).dtype.name]
    dims = f"[{','.join(map(str, array.shape))}]" if np.ndim(array) else ""
    values = ", ".join(repr(v.item()) for v in np.asarray(array).reshape(-1))
    return f"{kind}{dims} {name} = {{{values}}}"


def optimized_ops(model: onnx.ModelProto, directory: Path) -> list[str]:
    """Op types of onnxruntime's fully optimized CPU graph (its int8 kernels: QLinearConv...)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(directory / "optimized.onnx")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def selection_feeds(selected: int) -> dict[str, np.ndarray]:
    """Nine boxes and their scores, `selected` of them above 0.5 (a seeded choice): feeds for
    detector-like graphs whose sizes come from NonZero (0 selects none)."""
    rng = np.random.default_rng(selected)
    scores = np.zeros(9, np.float32)
    scores[rng.choice(9, selected, replace=False)] = 0.9
    return {"boxes": rng.normal(size=(9, 4)).astype(np.float32), "scores": scores}
