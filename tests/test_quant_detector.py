"""A QAT detector in MegEngine/Models' quantized RetinaNet style (models/quant_detector.py):
quantized backbone, one DequantStub per level, float FPN and a float head shared by three
levels (`disable_quantize()`). The export mixes QDQ and float layers; QAT and int8 models are
checked per layer (teacher-forced: quantized tensors within one step, float ones at the
float tolerance) and end to end at the float tolerance on the float outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.conftest import _megengine_or_fail
from tm2onnx.cli import main

pytestmark = pytest.mark.megengine
SHAPE = (2, 3, 64, 64)
QUANTIZED_CONVS = 10  # stem + 3 blocks x (two convs + downsample)
FLOAT_CONVS = 6 + 3 * 3  # FPN lateral/output per level + the head's three convs per level


@pytest.fixture(scope="module")
def qat_traced():
    mge = _megengine_or_fail()
    import megengine.traced_module as tm

    from models.quant import calibrated_qat
    from models.quant_detector import QuantRetinaTiny

    traced = tm.trace_module(calibrated_qat(QuantRetinaTiny(), SHAPE),
                             mge.Tensor(np.zeros(SHAPE, np.float32)))
    traced.eval()
    return traced


def _conv_weights(model: onnx.ModelProto) -> list[str]:
    """For each Conv: 'qdq' when its weight comes from a DequantizeLinear, 'float' when it
    is a float initializer."""
    made = {out: node.op_type for node in model.graph.node for out in node.output}
    floats = {init.name for init in model.graph.initializer
              if init.data_type == onnx.TensorProto.FLOAT}
    return ["qdq" if made.get(node.input[1]) == "DequantizeLinear" else
            "float" if node.input[1] in floats else "other"
            for node in model.graph.node if node.op_type == "Conv"]


@pytest.mark.parametrize("kind", ["qat", "int8"])
def test_mixed_quantized_and_float_detector(megengine, qat_traced, kind):
    import tm2onnx
    from models.quant import int8_version
    from tm2onnx.validate import against_megengine

    traced = qat_traced if kind == "qat" else int8_version(qat_traced)
    model = tm2onnx.export(traced)
    weights = _conv_weights(model)
    assert (weights.count("qdq"), weights.count("float")) == (QUANTIZED_CONVS, FLOAT_CONVS)
    assert [node.op_type for node in model.graph.node].count("Resize") == 2
    report = against_megengine(model, traced, runs=3)
    assert report, str(report)
    forced = report.to_dict()["teacher_forced"]["tensors"]
    assert any(t["scale"] for t in forced) and any(t["scale"] is None for t in forced)
    assert all(t["passed"] for t in forced)


def test_int8_detector_file_exports_and_validates(megengine, qat_traced, tmp_path):
    import megengine as mge

    from models.quant import int8_version

    source, target = tmp_path / "retina_int8.tm", tmp_path / "retina_int8.onnx"
    mge.save(int8_version(qat_traced), str(source))
    assert main(["export", str(source), "-o", str(target), "--validate", "-q"]) == 0
    assert "QuantizeLinear" in {node.op_type for node in onnx.load(target).graph.node}
