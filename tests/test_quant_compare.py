"""The QDQ before/after check of `optimize --passes ... --validate` (and `validate --against`):
per quantized tensor, in steps, the transformed model fed the original's values. A graph whose
scales make every other conv sum an exact tie (s_x * s_w / s_y = 1/20) rounds differently in
onnxruntime's int8 kernels and in its float reference: a transform changing nothing passes, a
transform rescaling, flipping or dropping a quantization fails naming the tensor."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from tests.helpers import parse_model
from tm2onnx.cli import main

CHANNELS = 8


def _weights(seed: int) -> str:
    values = np.random.default_rng(seed).integers(-20, 21, (CHANNELS, CHANNELS, 3, 3))
    return ", ".join(str(v) for v in values.reshape(-1))


def tie_model(copy: bool = False) -> onnx.ModelProto:
    """x -> Q/DQ -> Conv(int8 w1) -> Q/DQ (c1_q) -> Conv(int8 w2) -> Q/DQ (c2_q) -> y; `copy`:
    c1 requantized at its own scale (c1_copy_q) before the second conv."""
    shape = f"[{CHANNELS}, {CHANNELS}, 3, 3]"
    second = "c1_dq"
    if copy:
        second = """c1_copy
            c1_copy_q = QuantizeLinear(c1_dq, y_scale, y_zero)
            c1_copy = DequantizeLinear(c1_copy_q, y_scale, y_zero)"""
    conv2 = "c2 = Conv <pads = [1, 1, 1, 1]> (" + second.split()[0] + ", w2)"
    extra = "\n".join(second.splitlines()[1:])
    return parse_model(f"""
        <ir_version: 9, opset_import: ["" : 17]>
        tie (float[1, {CHANNELS}, 16, 16] x) => (float[1, {CHANNELS}, 16, 16] y)
        <float x_scale = {{0.1}}, uint8 x_zero = {{128}}, float w_scale = {{0.1}},
         int8 w_zero = {{0}}, int8{shape} w1_q = {{{_weights(1)}}},
         int8{shape} w2_q = {{{_weights(2)}}}, float y_scale = {{0.2}},
         uint8 y_zero = {{128}}, float z_scale = {{0.4}}>
        {{
            x_q = QuantizeLinear(x, x_scale, x_zero)
            x_dq = DequantizeLinear(x_q, x_scale, x_zero)
            w1 = DequantizeLinear(w1_q, w_scale, w_zero)
            c1 = Conv <pads = [1, 1, 1, 1]> (x_dq, w1)
            c1_q = QuantizeLinear(c1, y_scale, y_zero)
            c1_dq = DequantizeLinear(c1_q, y_scale, y_zero)
            {extra}
            w2 = DequantizeLinear(w2_q, w_scale, w_zero)
            {conv2}
            c2_q = QuantizeLinear(c2, z_scale, y_zero)
            y = DequantizeLinear(c2_q, z_scale, y_zero)
        }}
    """)


@pytest.fixture
def tie_file(tmp_path) -> str:
    path = tmp_path / "tie.onnx"
    onnx.save(tie_model(), path)
    return str(path)


def test_noop_transform_on_qdq_passes_per_tensor(tie_file, tmp_path, capsys):
    """The two runs differ end to end (ties round apart and compound): was a float comparison
    failing `cleanup` while its localization said every tensor was within tolerance."""
    from tm2onnx.validate import against_onnx

    out = tmp_path / "out.onnx"
    assert main(["optimize", tie_file, "-o", str(out), "--passes", "cleanup,cse",
                 "--validate"]) == 0
    printed = capsys.readouterr().out
    assert "PASS: every layer within 1 step of" in printed, printed
    assert sorted(n.op_type for n in onnx.load(out).graph.node) == sorted(
        n.op_type for n in tie_model().graph.node)  # every Q/DQ kept
    report = against_onnx(tie_model(), tie_model(), runs=2)
    (end_to_end,) = report.steps
    assert end_to_end.count.max_steps > 1 and not report.comparison  # rounds apart: real test
    assert report and report.forced.first_failure is None
    one_step = {t.name for t in report.forced.quantized if t.steps.one}
    assert one_step == {"c1_q", "c2_q"}  # ties flip inside each conv, one step at most


def _scale_activation(graph: gs.Graph) -> None:
    graph.tensors()["y_scale"].values = np.array(0.3, np.float32)  # 1.5x, Q and DQ alike


def _flip_weight(graph: gs.Graph) -> None:
    weights = graph.tensors()["w2_q"].values.copy()
    index = np.unravel_index(np.argmax(np.abs(weights)), weights.shape)
    weights[index] = -weights[index]
    graph.tensors()["w2_q"].values = weights


def _drop_quantize(graph: gs.Graph) -> None:
    tensors = graph.tensors()
    for node in list(graph.nodes):
        if node.inputs and node.inputs[0].name == "c1_dq":
            node.inputs[0] = tensors["c1"]
    graph.cleanup()


@pytest.mark.parametrize(("breakage", "tensor"), [
    pytest.param(_scale_activation, "c1_q", id="scale-x1.5"),
    pytest.param(_flip_weight, "c2_q", id="flipped-weight"),
    pytest.param(_drop_quantize, "c1_q", id="dropped-q"),
])
def test_broken_qdq_transform_fails_naming_the_tensor(tie_file, tmp_path, capsys, monkeypatch,
                                                      breakage, tensor):
    from tm2onnx.transforms import TRANSFORMS, TransformReport

    def broken(graph: gs.Graph) -> TransformReport:
        """Deliberately wrong on the tie graph."""
        report = TransformReport("broken")
        breakage(graph)
        report.rewrote(tensor)
        return report

    monkeypatch.setitem(TRANSFORMS, "broken", broken)
    out = tmp_path / "out.onnx"
    assert main(["optimize", tie_file, "-o", str(out), "--passes", "cleanup,broken",
                 "--validate"]) == 1
    captured = capsys.readouterr()
    assert "transform 'broken' changed the outputs" in captured.err
    failure = next(line for line in captured.out.splitlines() if "FAIL:" in line)
    assert f"first: {tensor} " in failure, captured.out
    assert not out.exists()


def test_dropping_a_copy_at_the_same_scale_passes(tmp_path, capsys, monkeypatch):
    """Q(DQ(t)) at t's own scale and zero point copies t: a transform dropping it changes no
    value and passes, though the reference's c1_copy_q has no counterpart."""
    from tm2onnx.transforms import TRANSFORMS, TransformReport

    def drop_copy(graph: gs.Graph) -> TransformReport:
        """Rewires the second conv to c1_dq (what the copy holds)."""
        report = TransformReport("drop-copy")
        conv = next(node for node in graph.nodes if node.outputs[0].name == "c2")
        conv.inputs[0] = graph.tensors()["c1_dq"]
        graph.cleanup()
        report.rewrote(conv.name)
        return report

    monkeypatch.setitem(TRANSFORMS, "drop-copy", drop_copy)
    source, out = tmp_path / "copy.onnx", tmp_path / "out.onnx"
    onnx.save(tie_model(copy=True), source)
    assert main(["optimize", str(source), "-o", str(out), "--passes", "drop-copy",
                 "--validate"]) == 0, capsys.readouterr().out
    ops = Counter(n.op_type for n in onnx.load(out).graph.node)
    assert ops["QuantizeLinear"] == 3 and ops["DequantizeLinear"] == 5  # the copy went


def test_against_json_reports_steps_per_tensor(tie_file, capsys):
    assert main(["validate", tie_file, "--against", tie_file, "--json", "--runs", "3",
                 "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["verdict"] == "teacher-forced"
    (output,) = report["end_to_end_steps"]
    assert output["elements"] == 3 * CHANNELS * 16 * 16
    fractions = (output["exact_fraction"], output["one_step_fraction"],
                 output["beyond_fraction"])
    assert sum(fractions) == pytest.approx(1.0) and output["beyond_fraction"] > 0
    forced = report["teacher_forced"]
    assert forced["reference"] == tie_file and forced["samples"] == 3
    assert [t["tensor"] for t in forced["tensors"]] == ["x_q", "c1_q", "c2_q", "y"]
    assert all(t["steps"]["max_steps"] <= 1 for t in forced["tensors"])


def test_differently_quantized_models_are_refused_by_name(tie_file, tmp_path, capsys):
    """Nothing quantized in common (another tool's names and scales): one line saying so and
    what to do, not a list of every tensor as dropped."""
    model = tie_model()
    for node in model.graph.node:
        node.output[:] = [f"other_{name}" if name != "y" else name for name in node.output]
        node.input[:] = [f"other_{name}" if name.endswith(("_q", "_dq", "c1", "c2", "w1", "w2"))
                         and not name.endswith("w1_q") and not name.endswith("w2_q") else name
                         for name in node.input]
    other = tmp_path / "other.onnx"
    onnx.save(model, other)
    assert main(["validate", str(other), "--against", tie_file, "-q"]) == 1
    out = capsys.readouterr().out
    assert "two differently quantized models" in out and "--atol" in out, out
