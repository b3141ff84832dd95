"""Transforms keep their promises: fp16 checks underflow as well as overflow, absorb-const
refuses divisors without a finite reciprocal and folds that overflow, no transform changes the
caller's model, and run_pipeline tells a refusal from a crash."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper, numpy_helper

from tests.helpers import FP16, FP32, assert_same_function, init_text, ops, parse_model, run_ort
from tm2onnx.errors import TransformBug, TransformError
from tm2onnx.transforms import TRANSFORMS, TransformReport, run_pipeline, transform


def _scaled(op: str, constant: str) -> onnx.ModelProto:
    return parse_model(f"""<ir_version: 10, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] y) <float[1] c = {{{constant}}}> {{ y = {op}(x, c) }}""")


@pytest.mark.parametrize("op, constant", [("Div", "1e-8"), ("Mul", "1e-8"), ("Div", "1e-6")])
def test_fp16_keeps_constants_that_underflow_in_fp32(op, constant):
    model = _scaled(op, constant)
    half, (report,) = run_pipeline(model, ["fp16"])
    assert report.rewritten == [] and "fp16 flushes" in str(report)
    assert "Cast" not in ops(half)
    feeds = {"x": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
    got = run_ort(half, feeds)["y"]
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, run_ort(model, feeds)["y"], **FP32)


def test_fp16_still_converts_normal_constants_and_weights_with_a_few_tiny_values(rng):
    model = _scaled("Div", "4.0")
    half, (report,) = run_pipeline(model, ["fp16"])
    assert len(report.rewritten) == 1 and "Cast" in ops(half)
    assert_same_function(model, half, **FP16)
    weight = rng.standard_normal((64, 32)).astype(np.float32)
    weight[0, :4] = [1e-7, -3e-6, 0.0, 5e-9]  # flushed, but negligible next to the others
    linear = parse_model(f"""<ir_version: 10, opset_import: ["" : 17]>
g (float[2,64] x) => (float[2,32] y) <{init_text("w", weight)}> {{ y = MatMul(x, w) }}""")
    half, (report,) = run_pipeline(linear, ["fp16-linear"], options={
        "fp16-linear": {"min_params": 1}})
    assert len(report.rewritten) == 1
    assert_same_function(linear, half, **FP16)


def _conv_then(op: str, constant: str, weight: str = "1.0, 2.0, 3.0, 4.0") -> onnx.ModelProto:
    return parse_model(f"""<ir_version: 10, opset_import: ["" : 17]>
g (float[1,2,3,3] x) => (float[1,2,3,3] y)
<float[2,2,1,1] w = {{{weight}}}, float[1] c = {{{constant}}}> {{
    t = Conv(x, w)
    y = {op}(t, c)
}}""")


@pytest.mark.parametrize("op, constant, reasons", [
    # A subnormal divisor: once MegEngine has run in the process, the CPU treats subnormals
    # as zero (denormals-are-zero, the "smallest subnormal is zero" warning), so numpy sees 0.
    ("Div", "1e-39", ("no finite reciprocal", "divisor has zeros")),
    ("Mul", "1e38", ("overflow",)),
])
def test_absorb_const_refuses_folds_that_are_not_finite(op, constant, reasons):
    model = _conv_then(op, constant, weight="10.0, 20.0, 30.0, 40.0")
    before = model.SerializeToString()
    result, (report,) = run_pipeline(model, ["absorb-const"])
    assert report.rewritten == [] and any(reason in str(report) for reason in reasons)
    assert result.SerializeToString() == before


def test_absorb_const_still_folds_small_but_invertible_divisors():
    model = _conv_then("Div", "1e-30")
    result, (report,) = run_pipeline(model, ["absorb-const"])
    assert ops(result) == ["Conv"] and len(report.rewritten) == 1
    assert np.all(np.isfinite(numpy_helper.to_array(result.graph.initializer[0])))


def _constant_node_model() -> onnx.ModelProto:
    """A Constant node, a dead node and node metadata: what gs rewrites on export."""
    x, y = (helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 2]) for n in "xy")
    one = numpy_helper.from_array(np.ones((1, 2), np.float32))
    nodes = [helper.make_node("Constant", [], ["k"], value=one),
             helper.make_node("Add", ["k", "c"], ["kc"]),
             helper.make_node("Add", ["x", "kc"], ["y"]),
             helper.make_node("Relu", ["x"], ["dead"])]
    nodes[2].metadata_props.add(key="module", value="head")
    graph = helper.make_graph(nodes, "g", [x], [y],
                              [numpy_helper.from_array(np.full((1, 2), 3, np.float32), "c")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("name", ["cleanup", "deploy", "fp16", "fuse-conv-bn", "absorb-const",
                                  "fp16-linear"])
def test_no_transform_changes_the_callers_model(name):
    for model in (_constant_node_model(), _conv_then("Mul", "2.0")):
        before = model.SerializeToString()
        result, _ = run_pipeline(model, [name])
        assert model.SerializeToString() == before, name
        assert_same_function(model, result, **(FP16 if "fp16" in name else FP32))


@pytest.fixture
def crashing_and_refusing():
    @transform("test-crash")
    def crash(graph: gs.Graph) -> TransformReport:
        """Crashes (test only)."""
        return {}["missing"]

    @transform("test-refuse")
    def refuse(graph: gs.Graph) -> TransformReport:
        """Refuses (test only)."""
        raise TransformError("cannot do that here", hint="on purpose")

    yield
    del TRANSFORMS["test-crash"], TRANSFORMS["test-refuse"]


def test_run_pipeline_tells_a_crash_from_a_refusal(crashing_and_refusing):
    model = _scaled("Mul", "2.0")
    with pytest.raises(TransformBug) as bug:
        run_pipeline(model, ["cleanup", "test-crash"])
    assert isinstance(bug.value.__cause__, KeyError)
    assert bug.value.__cause__.__traceback__ is not None
    assert "KeyError" in str(bug.value) and "test-crash failed after [cleanup]" in str(bug.value)
    with pytest.raises(TransformError) as refusal:
        run_pipeline(model, ["test-refuse"])
    assert not isinstance(refusal.value, TransformBug)
    assert "cannot do that here" in str(refusal.value)


def test_cli_shows_a_crash_with_its_traceback_and_a_refusal_in_one_line(
        crashing_and_refusing, tmp_path, capsys):
    from tm2onnx.cli import main

    source = tmp_path / "in.onnx"
    source.write_bytes(_scaled("Mul", "2.0").SerializeToString())
    out = str(tmp_path / "out.onnx")
    assert main(["optimize", str(source), "-o", out, "--passes", "test-refuse", "-q"]) == 2
    refusal = capsys.readouterr().err.strip().splitlines()
    assert len(refusal) == 1 and "cannot do that here" in refusal[0]
    assert main(["optimize", str(source), "-o", out, "--passes", "test-crash", "-q"]) == 2
    crash = capsys.readouterr().err
    assert "crashed (KeyError)" in crash and "Traceback" in crash and "in crash" in crash
