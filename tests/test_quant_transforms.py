"""Transforms on QDQ graphs: `deploy` keeps every Q/DQ pair and int8 weight (nothing folded
across them) and computes the same; `fp16` refuses; `where` shows the scales."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import onnx

from tests.helpers import assert_same_function


def _qdq_model(**export_options: Any) -> onnx.ModelProto:
    """QuantStub -> ConvBn2d -> ConvBnRelu2d -> Concat -> DequantStub, then `* 8 / 128` in float:
    a BN-folded conv and constants after a DequantizeLinear, what deploy would like to fold."""
    import megengine as mge
    import megengine.module as M
    import megengine.traced_module as tm

    import tm2onnx
    from models.quant import QuantConvBnConcat, calibrated_qat

    class Scaled(M.Module):
        def __init__(self):
            super().__init__()
            self.body = QuantConvBnConcat()

        def forward(self, x):
            return self.body(x) * 8 / 128

    shape = (2, 3, 8, 8)
    traced = tm.trace_module(calibrated_qat(Scaled(), shape),
                             mge.Tensor(np.zeros(shape, np.float32)))
    traced.eval()
    return tm2onnx.export(traced, **export_options)


def _qdq_counts(model: onnx.ModelProto) -> Counter:
    counts = Counter(n.op_type for n in model.graph.node
                     if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Conv"))
    int8 = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    counts["DequantizeLinear of int8 weights"] = sum(
        n.op_type == "DequantizeLinear" and n.input[0] in int8 for n in model.graph.node)
    return counts


def test_deploy_keeps_qdq(megengine):
    from tm2onnx.transforms import run_pipeline

    model = _qdq_model()
    lean, reports = run_pipeline(model, ["deploy"])
    assert _qdq_counts(lean) == _qdq_counts(model)
    assert {"Mul", "Div"} <= {n.op_type for n in lean.graph.node}  # not absorbed into a Conv
    absorb = next(r for r in reports if r.name == "absorb-const")
    assert not absorb.rewritten
    assert_same_function(model, lean, rtol=0, atol=0)


def test_fp16_refuses_qdq(megengine):
    from tm2onnx.transforms import run_pipeline

    model = _qdq_model()
    half, reports = run_pipeline(model, ["fp16"])
    assert "quantized (QDQ) graph" in str(reports[0])
    assert half.SerializeToString() == model.SerializeToString()


def test_where_shows_scales(megengine):
    from tm2onnx.transforms import producers

    model = _qdq_model(qdq_activations="int8")
    infos = producers(model, op_type="Concat")
    assert [info.producer_op for info in infos] == ["DequantizeLinear"] * 2
    scales = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    for info in infos:
        expected = scales[f"{info.module}.act_scale"]
        assert f"scale={float(expected):.6g}" in info.quant and "(int8)" in info.quant
        assert info.quant in str(info)


def test_cli_export_validates_to_one_step(megengine, tmp_path, capsys):
    """quantize_qat -> calibrate -> trace -> pickle -> `tm2onnx export --validate`: passes at
    one quantization step, with the asked activation type."""
    import json
    import pickle

    import megengine as mge
    import megengine.traced_module as tm

    from models.quant import QuantConvBnConcat, calibrated_qat
    from tm2onnx.cli import main

    shape = (1, 3, 8, 8)
    traced = tm.trace_module(calibrated_qat(QuantConvBnConcat(), (2, 3, 8, 8)),
                             mge.Tensor(np.zeros(shape, np.float32)))
    traced.eval()
    path, out = tmp_path / "qat.tm", tmp_path / "qat.onnx"
    path.write_bytes(pickle.dumps(traced))
    params = tmp_path / "quant_params.json"
    assert main(["export", str(path), "-o", str(out), "--validate", "--passes", "deploy",
                 "--qdq-activations", "int8", "--quant-params-json", str(params)]) == 0
    captured = capsys.readouterr()
    assert "tolerance one step" in captured.err and "PASS" in captured.out
    zeros = [i for i in onnx.load(out).graph.initializer if i.name.endswith("act_zero_point")]
    assert zeros and all(z.data_type == onnx.TensorProto.INT8 for z in zeros)
    # mgeconvert's quantize_file_path layout: strings, keyed by MegEngine tensor names
    written = json.loads(params.read_text())
    scale = float(traced.conv_bn.get_activation_qparams().scale.numpy())
    assert written["conv_bn_out"] == {"dtype": "int8", "qmin": "-128", "qmax": "127",
                                      "scale": str(scale), "zero_point": "None",
                                      "is_weight": False}
    assert written["conv_bn.weight"]["is_weight"] is True
