"""QAT and int8 ConvTranspose*, LinearBn*, BatchMatMulActivation -> QDQ: within one quantization
step of MegEngine's QAT forward and of its int8 model (where MegEngine 1.13 can run it), both
activation types, onnxruntime unoptimized and fully optimized; structure and weight axes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

from tests.helpers import ops, optimized_ops
from tests.test_quant import _after_relu, _module, assert_qdq_structure, check_steps, inputs_for
from tests.test_quant import traced_qat as traced_stubbed

LEVELS = ("disable", "all")


# (factory, input shapes, ONNX op, what the int8 export is checked against: "megengine" (its
# int8 model), "qat" (MegEngine 1.13's quantized conv_transpose2d refuses a bias, groups and
# ReLU, so the QAT forward `quantize` stored it from), None (`quantize` itself fails: LinearBn
# without bias calls `beta.shape()`))
CASES = [
    pytest.param(_module("ConvTranspose2d", 3, 4, 3, stride=2, bias=False), [(2, 3, 5, 5)],
                 "ConvTranspose", "megengine", id="deconv-nobias"),
    pytest.param(_module("ConvTranspose2d", 3, 4, 3, stride=2, padding=1,
                                 output_padding=1), [(2, 3, 5, 5)], "ConvTranspose", "qat",
                 id="deconv-bias-output-padding"),
    pytest.param(_module("ConvTransposeRelu2d", 3, 4, 3, stride=2), [(2, 3, 5, 5)],
                 "ConvTranspose", "qat", id="deconv-relu"),
    pytest.param(_module("ConvTransposeBn2d", 3, 4, 4, stride=2, padding=1, bias=False),
                 [(2, 3, 5, 5)], "ConvTranspose", "qat", id="deconv-bn"),
    pytest.param(_module("ConvTransposeBnRelu2d", 4, 6, 3, stride=2, groups=2),
                 [(2, 4, 5, 5)], "ConvTranspose", "qat", id="deconv-bn-relu-g2"),
    pytest.param(_module("LinearBn1d", 12, 5), [(4, 12)], "Gemm", "megengine", id="linear-bn"),
    pytest.param(_module("LinearBnRelu1d", 12, 5), [(4, 12)], "Gemm", "megengine",
                 id="linear-bn-relu"),
    pytest.param(_module("LinearBn1d", 12, 5, bias=False), [(2, 3, 12)], "MatMul", None,
                 id="linear-bn-nobias-3d"),
    pytest.param(_module("BatchMatMulActivation", 2, 6, 5), [(2, 6, 5)], "MatMul",
                 "megengine", id="bmm-bias"),
    pytest.param(_module("BatchMatMulActivation", 3, 6, 4, bias=False), [(3, 6, 7)], "MatMul",
                 "megengine", id="bmm-nobias"),
]


def _integers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer
            if init.name.endswith("_quantized")}


@pytest.mark.parametrize("factory, shapes, op, int8", CASES)
def test_modules_within_one_step(megengine, factory, shapes, op, int8):
    """QAT export vs the QAT forward; int8 export vs MegEngine's int8 model, or, where MegEngine
    cannot run it, vs the QAT forward with exactly the QAT export's integer weights and biases
    (what `quantize` stored); int8 weight initializers behind a DequantizeLinear."""
    from models.quant import int8_version

    traced = traced_stubbed(factory, shapes)
    arrays = inputs_for(shapes)
    for kind in ("uint8", "int8"):
        qat_model = check_steps(traced, arrays, levels=LEVELS, qdq_activations=kind)
        assert_qdq_structure(qat_model, op)
        if "Relu" in type(traced.inner).__name__:
            assert "Clip" in ops(qat_model)
        if int8 is None:
            continue
        int8_model = check_steps(int8_version(traced), arrays, levels=LEVELS,
                                 qdq_activations=kind,
                                 reference=traced if int8 == "qat" else None)
        assert_qdq_structure(int8_model, op)
        if int8 == "qat":
            stored, computed = _integers(int8_model), _integers(qat_model)
            assert stored.keys() == computed.keys()
            assert all(np.array_equal(stored[k], computed[k]) for k in stored), kind


def test_batch_matmul_relu(megengine):
    """nonlinear_mode='relu' (quantize_qat and quantize do not carry it over from the float
    module, so it is set on the QAT / int8 module, whose forward reads it)."""
    from models.quant import int8_version

    shapes = [(2, 6, 3)]
    traced = traced_stubbed(_module("BatchMatMulActivation", 2, 6, 5, bias=False), shapes)
    traced.inner.nonlinear_mode = "relu"
    int8 = int8_version(traced)
    int8.inner.nonlinear_mode = "relu"
    for model in (traced, int8):
        exported = check_steps(model, inputs_for(shapes), levels=LEVELS)
        assert "Clip" in ops(exported) and "MatMul" in ops(exported)


def test_refusals(megengine):
    import tm2onnx
    from tm2onnx.errors import ConversionError

    shapes = [(2, 6, 5)]
    traced = traced_stubbed(_module("BatchMatMulActivation", 2, 6, 5, bias=False), shapes)
    traced.inner.nonlinear_mode = "sigmoid"
    with pytest.raises(ConversionError, match="inner: nonlinear_mode='sigmoid'"):
        tm2onnx.export(traced)


def test_linear_bn_runs_int8_kernel(megengine, tmp_path):
    """onnxruntime fuses the QDQ LinearBn into QGemm. (Its CPU provider has no int8
    ConvTranspose or batched MatMul kernel for these: they run float between Q/DQ; checked to
    one step at ORT_ENABLE_ALL above.)"""
    from models.quant import int8_version

    shapes = [(2, 3, 6, 6)]
    traced = traced_stubbed(_after_relu(_module("LinearBnRelu1d", 8 * 6 * 6, 10), flatten=True),
                            shapes)
    for model in (traced, int8_version(traced)):
        exported = check_steps(model, inputs_for(shapes), levels=("all",), target="onnxruntime")
        assert "QGemm" in optimized_ops(exported, tmp_path)
