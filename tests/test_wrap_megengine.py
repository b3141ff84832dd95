"""The guide's own way to add pre/post-processing: a MegEngine Module wrapping a loaded
TracedModule, re-traced, then exported. Checked against MegEngine and against numpy."""

from __future__ import annotations

import pickle

import numpy as np

from tests.helpers import FP32, assert_matches, run_ort


def test_wrapper_module_around_loaded_traced_module(megengine, tmp_path):
    import megengine.functional as F
    import megengine.module as M
    import megengine.traced_module as tm

    import tm2onnx
    from models.nets import PrePostNet

    class Main(M.Module):
        def forward(self, x):
            return F.relu(x)

    shape = (1, 14, 8, 8)
    path = tmp_path / "main.tm"
    path.write_bytes(pickle.dumps(tm.trace_module(Main(), F.zeros(shape))))
    loaded = tm2onnx.load_traced(path)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    y = rng.uniform(0.5, 2, shape).astype(np.float32)
    wrapped = tm.trace_module(PrePostNet(loaded), megengine.Tensor(x), megengine.Tensor(y))

    model = tm2onnx.export(wrapped, input_names=["x", "y"], output_names=["out"])

    assert [i.name for i in model.graph.input] == ["x", "y"]
    assert [n.op_type for n in model.graph.node] == ["Mul", "Relu", "Div"]
    got = run_ort(model, {"x": x, "y": y})
    assert_matches({"out": wrapped(megengine.Tensor(x), megengine.Tensor(y)).numpy()}, got,
                   **FP32)
    assert_matches({"out": np.maximum(x * y, 0) / y}, got, **FP32)
