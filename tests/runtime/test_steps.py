"""runtime/steps.py: counting differences in quantization steps, the grid each tensor of a QDQ
graph lies on, tie-aware top-1, and the exposing session that keeps onnxruntime's int8 kernels."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.helpers import parse_model
from tm2onnx.runtime.session import exposing_session, run_model
from tm2onnx.runtime.steps import (
    OutputSteps,
    activation_grids,
    averaged_grids,
    count_steps,
    has_activation_qdq,
    output_steps,
    top1_hits,
)

QDQ = parse_model('''<ir_version: 10, opset_import: ["" : 17]>
g (float[1, 4, 8, 8] x) => (float[1, 4, 4, 4] y) <
    float s = {0.05}, uint8 z = {128}, float so = {0.1}, uint8 zo = {128},
    int8[4, 4, 3, 3] w = {''' + ", ".join(str((i * 7) % 11 - 5) for i in range(144)) + '''},
    float ws = {0.02}, int8 wz = {0}> {
  q = QuantizeLinear (x, s, z)
  xd = DequantizeLinear (q, s, z)
  wd = DequantizeLinear (w, ws, wz)
  c = Conv <pads = [1, 1, 1, 1]> (xd, wd)
  cq = QuantizeLinear (c, so, zo)
  cd = DequantizeLinear (cq, so, zo)
  p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (cd)
  y = Identity (p)
}''')


def test_count_steps_counts_exact_one_and_beyond():
    reference = np.array([0.0, 0.1, 0.2, 0.3, -0.5], np.float32)
    actual = reference + np.array([0, 0.1, -0.1, 0.3, 0], np.float32)
    steps = count_steps(reference, actual, 0.1)
    assert (steps.size, steps.exact, steps.one, steps.beyond) == (5, 2, 2, 1)
    assert steps.max_steps == 3 and steps.on_grid
    assert steps.fraction(steps.one) == pytest.approx(0.4)
    half = count_steps(reference, reference + np.float32(0.05), 0.1)
    assert not half.on_grid and half.off_grid == pytest.approx(0.5, abs=1e-4)
    total = steps + half
    assert total.size == 10 and total.max_steps == 3 and not total.on_grid


def test_activation_grids_follow_dequantize_and_grid_keeping_ops():
    grids = activation_grids(QDQ)
    assert grids == {"xd": pytest.approx(0.05), "cd": pytest.approx(0.1),
                     "p": pytest.approx(0.1), "y": pytest.approx(0.1)}
    assert "wd" not in grids and "c" not in grids  # a weight; a float conv output
    assert has_activation_qdq(QDQ)
    assert not has_activation_qdq(parse_model('''<ir_version: 10, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { y = Relu (x) }'''))


def test_averaged_float_tensors_take_their_inputs_steps():
    """A DequantizeLinear output averaged (GlobalAveragePool) and flattened stays float in
    onnxruntime: judged in the DequantizeLinear's steps; a Gemm of it (weights) is not."""
    model = parse_model("""
        <ir_version: 9, opset_import: ["" : 17]>
        pooled (float[1, 4, 2, 2] x) => (float[1, 3] y, float[1, 4] flat)
        <float s = {0.05}, uint8 z = {128}, float[4, 3] w = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,
         12}>
        {
            q = QuantizeLinear(x, s, z)
            dq = DequantizeLinear(q, s, z)
            pool = GlobalAveragePool(dq)
            flat = Flatten(pool)
            y = MatMul(flat, w)
        }
    """)
    grids = activation_grids(model)
    assert grids == {"dq": pytest.approx(0.05)}
    assert averaged_grids(model, grids) == {"pool": pytest.approx(0.05),
                                            "flat": pytest.approx(0.05)}


def test_top1_counts_ties_as_agreement_and_needs_ten_classes():
    reference = np.zeros((3, 10), np.float32)
    reference[0, [2, 5]] = 1.0        # a tie: either argmax agrees
    reference[1, 7] = 1.0
    reference[2, 1] = 1.0
    actual = np.zeros_like(reference)
    actual[0, 5] = 1.0
    actual[1, 7] = 1.0
    actual[2, 3] = 1.0                # disagrees
    assert top1_hits(reference, actual) == (2, 3)
    assert top1_hits(reference[:, :9], actual[:, :9]) is None
    assert top1_hits(reference.reshape(3, 10, 1), actual.reshape(3, 10, 1)) is None


def test_output_steps_merge_over_runs():
    grids = {"y": 0.5}
    first = output_steps({"y": np.zeros((2, 10))}, {"y": np.zeros((2, 10))}, grids)["y"]
    moved = np.zeros((2, 10))
    moved[0, 0] = 0.5
    second = output_steps({"y": np.zeros((2, 10))}, {"y": moved}, grids)["y"]
    both = first.merged(second)
    assert isinstance(both, OutputSteps) and both.count.size == 40 and both.count.one == 1
    assert both.top1 == (4, 4)  # all-zero reference rows: every argmax ties
    assert both.to_dict()["one_step_fraction"] == pytest.approx(1 / 40)
    assert output_steps({"z": np.zeros(3)}, {"z": np.zeros(3)}, grids) == {}


def test_exposing_session_keeps_int8_kernels_and_values(tmp_path):
    """Exposed DequantizeLinear outputs come from onnxruntime's fused int8 conv: same values as
    the plain optimized session, the model left as it was."""
    import onnxruntime as ort

    before = QDQ.SerializeToString()
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    added = len(QDQ.graph.output)
    QDQ.graph.output.append(onnx.ValueInfoProto(name="cd"))
    try:
        ort.InferenceSession(QDQ.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
    finally:
        QDQ.graph.output.pop()
    optimized = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "QLinearConv" in optimized and "Conv" not in optimized, optimized
    x = {"x": np.random.default_rng(0).normal(size=(1, 4, 8, 8)).astype(np.float32)}
    exposed = run_model(exposing_session(QDQ, ["cd", "xd"]), x)
    plain = run_model(QDQ, x)
    assert QDQ.SerializeToString() == before and len(QDQ.graph.output) == added
    assert set(exposed) == {"y", "cd", "xd"}
    np.testing.assert_array_equal(exposed["y"], plain["y"])
    pooled = exposed["cd"].reshape(1, 4, 4, 2, 4, 2).max(axis=(3, 5))
    np.testing.assert_array_equal(pooled, plain["y"])  # cd is what the MaxPool read
    assert count_steps(exposed["xd"], x["x"], 0.05).max_steps == 0  # x quantized, |x| < 6.4
