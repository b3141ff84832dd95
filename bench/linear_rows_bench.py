"""A Linear layer on [1, 197, 768] x [768, 768] two ways, onnxruntime CPU, ORT_ENABLE_ALL, 1
thread, interleaved: Reshape -> Gemm -> Reshape (what exporters write) against MatMul + Add on
the 3-D tensor (what fold-shapes leaves); prints the ops onnxruntime runs and the medians."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

SHAPE, WIDTH = (1, 197, 768), 768


def linear_model(form: str, rng: np.random.Generator) -> onnx.ModelProto:
    weight = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w"),
             numpy_helper.from_array(rng.standard_normal(WIDTH).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([-1, WIDTH], np.int64), "rows"),
             numpy_helper.from_array(np.array(SHAPE, np.int64), "back")]
    if form == "gemm":
        nodes = [helper.make_node("Reshape", ["x", "rows"], ["r"]),
                 helper.make_node("Gemm", ["r", "w", "b"], ["m"]),
                 helper.make_node("Reshape", ["m", "back"], ["y"])]
    else:
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]),
                 helper.make_node("Add", ["m", "b"], ["y"])]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, form, [value("x", TensorProto.FLOAT, SHAPE)],
                              [value("y", TensorProto.FLOAT, SHAPE)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def session(model: onnx.ModelProto, optimized: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    feeds = {"x": np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {form: session(linear_model(form, np.random.default_rng(0)),
                                  Path(tmp, f"{form}.onnx")) for form in ("gemm", "matmul_add")}
        for form in sessions:
            ran = [n.op_type for n in onnx.load(Path(tmp, f"{form}.onnx")).graph.node]
            print(f"{form}: onnxruntime runs {ran}")
    outputs = [s.run(None, feeds)[0] for s in sessions.values()]
    print(f"max |difference|: {float(np.max(np.abs(outputs[0] - outputs[1]))):.3g}")
    times: dict[str, list[float]] = {form: [] for form in sessions}
    for _ in range(args.runs + 5):  # the first 5 of each are warm-up
        for form, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, feeds)
            times[form].append((time.perf_counter() - start) * 1e3)
    for form, values in times.items():
        print(f"{form}: median {statistics.median(values[5:]):.3f} ms, "
              f"min {min(values[5:]):.3f} ms over {args.runs}")


if __name__ == "__main__":
    main()
