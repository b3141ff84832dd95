"""`qdq_weights="uint8"` / `--qdq-weights uint8`: 8-bit weights stored as uint8 = int8 + 128
with zero point 128 — the same model by ONNX's definition, and exact on onnxruntime's x86
kernels without VNNI, whose U8S8 path saturates int16 sums of large activation x weight pairs
(a conv reading a signed QuantStub output is where it shows)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from tests.helpers import optimized_ops
from tests.test_quant import _module, check_steps, inputs_for, traced_qat
from tm2onnx.cli import main

pytestmark = pytest.mark.megengine
SHAPES = [(2, 16, 8, 8)]


@pytest.fixture(scope="module")
def signed_conv():
    """QuantStub (signed activations) -> Conv2d 16->8: the layer the saturation hits."""
    return traced_qat(_module("Conv2d", 16, 8, 3, padding=1), SHAPES)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return {node.input[0]: (inits[node.input[0]], inits[node.input[2]])
            for node in model.graph.node if node.op_type == "DequantizeLinear"
            and node.input[0] in inits and inits[node.input[0]].dtype.itemsize == 1}


def test_uint8_weights_are_int8_plus_128_with_zero_point_128(megengine, signed_conv):
    import tm2onnx

    signed = _weights(tm2onnx.export(signed_conv))
    unsigned = _weights(tm2onnx.export(signed_conv, qdq_weights="uint8"))
    assert signed.keys() == unsigned.keys() and signed
    for name, (weight, zero) in signed.items():
        assert weight.dtype == np.int8 and unsigned[name][0].dtype == np.uint8
        np.testing.assert_array_equal(unsigned[name][0].astype(int), weight.astype(int) + 128)
        np.testing.assert_array_equal(unsigned[name][1].astype(int), zero.astype(int) + 128)


@pytest.mark.parametrize("scale", [1.0, 3.0], ids=["calibrated", "3x-range"])
def test_uint8_weights_within_one_step_on_int8_kernels(megengine, signed_conv, scale, tmp_path):
    """Inputs at 3x the calibrated range put many activations at the ends of uint8 (0, 255),
    where the U8S8 saturation happens; uint8 weights must stay within one step anyway."""
    import tm2onnx
    from tm2onnx.runtime.session import cpu_has_vnni, run_model
    from tm2onnx.validate import against_megengine

    arrays = [a * scale for a in inputs_for(SHAPES, seed=3)]
    model = check_steps(signed_conv, arrays, qdq_weights="uint8")
    feeds = {model.graph.input[0].name: arrays[0]}
    name = model.graph.output[0].name
    signed = tm2onnx.export(signed_conv)  # the same function, as ONNX defines it
    np.testing.assert_array_equal(run_model(model, feeds, opt_level="disable")[name],
                                  run_model(signed, feeds, opt_level="disable")[name])
    if scale > 1 and cpu_has_vnni() is False:
        # The reason for the option, on this CPU: int8 weights saturate (seen: 15 steps).
        with pytest.raises(AssertionError, match="onnxruntime \\(all\\)"):
            check_steps(signed_conv, arrays, levels=("all",))
        np.savez(tmp_path / "x.npz", **{model.graph.input[0].name: arrays[0]})
        report = against_megengine(signed, signed_conv, inputs=str(tmp_path / "x.npz"))
        assert not report and "--qdq-weights uint8" in str(report)
        assert against_megengine(model, signed_conv, inputs=str(tmp_path / "x.npz"))


def test_optimized_session_keeps_int8_kernels(megengine, signed_conv, tmp_path):
    import tm2onnx

    kernels = optimized_ops(tm2onnx.export(signed_conv, qdq_weights="uint8",
                                           target="onnxruntime"), tmp_path)
    assert "QLinearConv" in kernels and "Conv" not in kernels


def test_cli_flag_exports_uint8_weights_and_validates(megengine, signed_conv, tmp_path):
    import megengine as mge

    source, target = tmp_path / "conv.tm", tmp_path / "conv.onnx"
    mge.save(signed_conv, str(source))
    assert main(["export", str(source), "-o", str(target), "--qdq-weights", "uint8",
                 "--validate", "-q"]) == 0
    assert {w.dtype for w, _ in _weights(onnx.load(target)).values()} == {np.dtype(np.uint8)}


def test_unknown_weight_type_is_refused(megengine, signed_conv):
    import tm2onnx
    from tm2onnx.errors import Tm2OnnxError

    with pytest.raises(Tm2OnnxError, match="qdq_weights='int4'"):
        tm2onnx.export(signed_conv, qdq_weights="int4")


@pytest.mark.parametrize("weights, validate", [("int8", False), ("uint8", False),
                                               ("int8", True)])
def test_unvalidated_export_warns_where_kernels_may_saturate(megengine, signed_conv, tmp_path,
                                                             capsys, weights, validate):
    import megengine as mge

    from tm2onnx.runtime.session import cpu_has_vnni

    source, target = tmp_path / "conv.tm", tmp_path / "conv.onnx"
    mge.save(signed_conv, str(source))
    extra = ["--validate"] if validate else []
    assert main(["export", str(source), "-o", str(target), "--qdq-weights", weights, "-q",
                 *extra]) == 0
    warned = "may saturate" in capsys.readouterr().err
    assert warned == (weights == "int8" and not validate and cpu_has_vnni() is False)
