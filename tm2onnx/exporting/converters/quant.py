"""QAT (`quantize_qat`) and int8 (`quantize`) modules as QDQ ONNX: int8 weights behind a
DequantizeLinear, int32 biases, Q->DQ where MegEngine quantizes activations, for the exact
classes (ConvTranspose: quant_deconv.py, BatchMatMulActivation: quant_bmm.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import megengine.module.qat as QAT
import megengine.module.quantized as Q
import numpy as np

from ...errors import ConversionError
from ..context import ExportContext
from . import module_converter
from ._qdq import check_opset, dq_bias, dq_weight, emit_qdq
from ._qmodule import (
    RELU_MODULES,
    act_qparams,
    emit_quantized_conv,
    float_bias,
    folded_bn,
    quantized_operand,
    quantized_weight,
)
from ._util import normalize_axis
from .activation import elemwise_module
from .fused import _Hidden
from .misc import concat_module


def conv_parts(module: Any) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """(the Conv2d holding stride/padding, float weight to quantize or None, float bias)."""
    if isinstance(module, QAT.ConvBn2d | QAT.ConvBnRelu2d):
        conv = module.conv
        shape = (-1, 1, 1, 1) if conv.groups == 1 else (conv.groups, -1, 1, 1, 1)
        return conv, *folded_bn(conv, module.bn, shape)
    return module, None, float_bias(module)


def linear_parts(module: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(float weight to quantize or None, float bias); qat.LinearBn folds BN as MegEngine's
    calc_linear_bn_qat does (int8 LinearBn modules store the folded weight and bias)."""
    if isinstance(module, QAT.LinearBn1d | QAT.LinearBnRelu1d):
        return folded_bn(module.linear, module.bn, (-1, 1))
    return None, float_bias(module)


# ---- converters ---------------------------------------------------------------------------------
@module_converter(QAT.QuantStub, Q.QuantStub)
def quant_stub(ctx: ExportContext, expr: Any, module: Any) -> None:
    check_opset(ctx)
    emit_qdq(ctx, ctx.value_of(expr.inputs[1]), act_qparams(ctx, module), expr.outputs)


@module_converter(QAT.DequantStub, Q.DequantStub)
def dequant_stub(ctx: ExportContext, expr: Any, module: Any) -> None:
    ctx.emit("Identity", [ctx.value_of(expr.inputs[1])], expr.outputs)


@module_converter(QAT.Conv2d, QAT.ConvRelu2d, QAT.ConvBn2d, QAT.ConvBnRelu2d,
                  Q.Conv2d, Q.ConvRelu2d, Q.ConvBn2d, Q.ConvBnRelu2d)
def quantized_conv(ctx: ExportContext, expr: Any, module: Any) -> None:
    check_opset(ctx)
    emit_quantized_conv(ctx, expr, module, *conv_parts(module))


@module_converter(QAT.Linear, QAT.LinearRelu, QAT.LinearBn1d, QAT.LinearBnRelu1d, Q.Linear,
                  Q.LinearRelu, Q.LinearBn1d, Q.LinearBnRelu1d)
def quantized_linear(ctx: ExportContext, expr: Any, module: Any) -> None:
    check_opset(ctx)
    x, x_scale = quantized_operand(ctx, expr.inputs[1], module)
    weight, bias = linear_parts(module)
    integers, wqp = quantized_weight(ctx, module, weight)
    bias = dq_bias(ctx, "bias", bias, wqp, x_scale)
    if len(expr.inputs[1].shape) == 2:
        out = ctx.op("Gemm", [x, dq_weight(ctx, "weight", integers, wqp)]
                     + ([bias] if bias is not None else []), transB=1)
    else:
        out = ctx.op("MatMul", [x, dq_weight(ctx, "weight_t", integers.T, wqp, axis=1)])
        out = out if bias is None else ctx.op("Add", [out, bias])
    emit_qdq(ctx, out, act_qparams(ctx, module), expr.outputs,
             relu=isinstance(module, RELU_MODULES))


@module_converter(QAT.Elemwise, Q.Elemwise)
def quantized_elemwise(ctx: ExportContext, expr: Any, module: Any) -> None:
    """add / fuse_add_relu as DQ inputs -> Add -> Q (onnxruntime's QLinearAdd); other modes
    through the float Elemwise converter, then Q/DQ of the result."""
    check_opset(ctx)
    mode = str(module.method).rsplit(".", 1)[-1].lower()
    mode = mode[1:] if isinstance(module, Q.Elemwise) else mode  # quantized: "q" + mode
    qp = act_qparams(ctx, module)
    if mode in ("add", "fuse_add_relu"):
        operands = [quantized_operand(ctx, node, module)[0] for node in expr.args[1:]]
        emit_qdq(ctx, ctx.op("Add", operands), qp, expr.outputs, relu=mode != "add")
        return
    hidden = [_Hidden(f"{ctx.base_name}/{mode}", np.float32)]
    elemwise_module(ctx, _Retargeted(expr, hidden), SimpleNamespace(method=mode))
    emit_qdq(ctx, ctx.value_of(hidden[0]), qp, expr.outputs)


@module_converter(QAT.Concat, Q.Concat)
def quantized_concat(ctx: ExportContext, expr: Any, module: Any) -> None:
    check_opset(ctx)
    args = expr.named_args
    if all(hasattr(node, "expr") for node in args["inps"]):
        pieces = [quantized_operand(ctx, node, module)[0] for node in args["inps"]]
        axis = normalize_axis(int(args["axis"]), len(expr.outputs[0].shape))
        out = ctx.op("Concat", pieces, axis=axis)
    else:
        hidden = [_Hidden(f"{ctx.base_name}/concat", np.float32)]
        concat_module(ctx, _Retargeted(expr, hidden), module)
        out = ctx.value_of(hidden[0])
    emit_qdq(ctx, out, act_qparams(ctx, module), expr.outputs)


# ---- helpers ------------------------------------------------------------------------------------
class _Retargeted:
    """The expr with its outputs replaced by stand-ins, to reuse a float converter and then
    quantize what it produced."""

    def __init__(self, expr: Any, outputs: list):
        self._expr, self.outputs = expr, outputs

    def __getattr__(self, name: str) -> Any:
        return getattr(self._expr, name)


def _refuse(ctx: ExportContext, expr: Any, module: Any) -> None:
    raise ConversionError(f"{ctx.module_path}: {type(module).__module__}."
                          f"{type(module).__name__} has no QDQ converter yet", where=ctx.source,
                          hint="export the float model, or add a converter in converters/quant.py")


def _register_refusals() -> None:
    """Any other QAT/int8 class (a newer MegEngine's) may subclass a float module; the MRO
    lookup would convert it as float, dropping its quantization."""
    import inspect

    from . import MODULE_CONVERTERS

    for namespace, base in ((QAT, QAT.QATModule), (Q, Q.QuantizedModule)):
        for cls in vars(namespace).values():
            if (inspect.isclass(cls) and issubclass(cls, base) and cls is not base
                    and cls not in MODULE_CONVERTERS):
                module_converter(cls)(_refuse)


from . import quant_bmm, quant_deconv  # noqa: F401  (register before the refusals)

_register_refusals()
