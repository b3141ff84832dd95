"""QAT (`quantize_qat`) and int8 (`quantize`) modules as QDQ ONNX: int8 weights with a
DequantizeLinear, int32 biases, and QuantizeLinear->DequantizeLinear where MegEngine quantizes
activations (module outputs, QuantStub). Registered for the exact classes; see _qdq.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import megengine.functional as F
import megengine.module.qat as QAT
import megengine.module.quantized as Q
import numpy as np

from ..context import ExportContext
from ..errors import ConversionError
from . import module_converter
from ._qdq import (
    QParams,
    check_opset,
    dq_bias,
    dq_weight,
    emit_qdq,
    from_dtype,
    from_megengine,
    quantized_input,
)
from ._util import normalize_axis
from .activation import elemwise_module
from .conv import check_conv, emit_conv, ungrouped
from .fused import _Hidden
from .misc import concat_module

RELU_MODULES = (QAT.ConvRelu2d, QAT.ConvBnRelu2d, QAT.LinearRelu, Q.ConvRelu2d,
                Q.ConvBnRelu2d, Q.LinearRelu)
QUANTIZED = (Q.QuantStub, Q.DequantStub, Q.Conv2d, Q.ConvRelu2d, Q.ConvBn2d, Q.ConvBnRelu2d,
             Q.Linear, Q.LinearRelu, Q.Elemwise, Q.Concat)


# ---- where MegEngine keeps the parameters ------------------------------------------------------
def act_qparams(ctx: ExportContext, module: Any) -> QParams:
    """The output quantization MegEngine's `quantize` would give this module."""
    if isinstance(module, QUANTIZED):
        return from_dtype(ctx, getattr(module, "output_dtype", None), "output")
    return from_megengine(ctx, module.get_activation_qparams(), "activation")


def quantized_weight(ctx: ExportContext, module: Any, weight: np.ndarray | None = None
                     ) -> tuple[np.ndarray, QParams]:
    """Integer weight and its parameters: stored int8 for int8 modules, else the float (folded)
    weight quantized with the weight observer / fake-quant's scale."""
    if isinstance(module, QUANTIZED):
        qp = from_dtype(ctx, module.weight.dtype, "weight")
        return module.weight.numpy().astype(np.int64), qp
    qp = from_megengine(ctx, module.get_weight_qparams(), "weight")
    values = module.weight.numpy() if weight is None else weight
    if qp.per_channel and qp.scale.size != values.shape[0] * (values.shape[1]
                                                               if values.ndim == 5 else 1):
        raise ConversionError(f"{ctx.module_path}: weight scale has {qp.scale.size} values for "
                              f"weight shape {values.shape}", where=ctx.source,
                              hint="use one scale per tensor or per output channel")
    return qp.quantize(ungrouped(values, 2) if values.ndim == 5 else values), qp


def folded_conv_bn(module: Any) -> tuple[np.ndarray, np.ndarray]:
    """qat.ConvBn2d's eval-mode fold, with MegEngine's own ops in its order (calc_conv_bn_qat):
    the folded weight is what gets quantized."""
    conv, bn = module.conv, module.bn
    channels = bn.num_features
    gamma = (bn.weight if bn.weight is not None else F.ones(channels)).reshape(1, -1, 1, 1)
    beta = (bn.bias if bn.bias is not None else F.zeros(channels)).reshape(1, -1, 1, 1)
    bias = conv.bias if conv.bias is not None else F.zeros(conv._infer_bias_shape())
    istd = 1.0 / F.sqrt(bn.running_var + bn.eps)
    factor = gamma * istd
    shape = (-1, 1, 1, 1) if conv.groups == 1 else (conv.groups, -1, 1, 1, 1)
    weight = conv.weight * factor.reshape(*shape)
    bias = beta + gamma * (bias - bn.running_mean) * istd
    return weight.numpy(), bias.numpy().reshape(-1)


def conv_parts(module: Any) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """(the Conv2d holding stride/padding, float weight to quantize or None, float bias)."""
    if isinstance(module, QAT.ConvBn2d | QAT.ConvBnRelu2d):
        weight, bias = folded_conv_bn(module)
        return module.conv, weight, bias
    bias = None if module.bias is None else module.bias.numpy().reshape(-1)
    return module, None, bias


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
    conv, weight, bias = conv_parts(module)
    check_conv(ctx, conv)
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        raise ConversionError(f"{ctx.module_path}: padding_mode={conv.padding_mode!r} in a "
                              "quantized conv is not supported", where=ctx.source,
                              hint="use zero padding")
    x, x_scale = _input(ctx, expr.inputs[1], module)
    integers, wqp = quantized_weight(ctx, module, weight)
    w = dq_weight(ctx, "weight", ungrouped(integers, 2), wqp)
    hidden = _Hidden(f"{ctx.base_name}/conv", np.float32)
    emit_conv(ctx, x, w, dq_bias(ctx, "bias", bias, wqp, x_scale), [hidden], spatial=2,
              stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
              groups=conv.groups)
    emit_qdq(ctx, ctx.value_of(hidden), act_qparams(ctx, module), expr.outputs,
             relu=isinstance(module, RELU_MODULES))


@module_converter(QAT.Linear, QAT.LinearRelu, Q.Linear, Q.LinearRelu)
def quantized_linear(ctx: ExportContext, expr: Any, module: Any) -> None:
    check_opset(ctx)
    x, x_scale = _input(ctx, expr.inputs[1], module)
    integers, wqp = quantized_weight(ctx, module)
    bias = None if module.bias is None else module.bias.numpy().reshape(-1)
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
        operands = [_input(ctx, node, module)[0] for node in expr.args[1:]]
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
        pieces = [_input(ctx, node, module)[0] for node in args["inps"]]
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


def _input(ctx: ExportContext, node: Any, module: Any) -> tuple[Any, Any]:
    """A quantized op's input as a DequantizeLinear output. QAT modules take float input where
    MegEngine did not fake-quantize it; int8 modules always run on quantized input."""
    int8 = isinstance(module, QUANTIZED)
    value, scale = quantized_input(ctx, node, rounded=int8)
    if int8 and scale is None:
        raise ConversionError(f"{ctx.module_path}: cannot tell the quantization of input "
                              f"'{node.name}' (no QuantStub or quantized module before it)",
                              where=ctx.source, hint="put a QuantStub before the first "
                                                     "quantized module")
    return value, scale


def _refuse(ctx: ExportContext, expr: Any, module: Any) -> None:
    raise ConversionError(f"{ctx.module_path}: {type(module).__module__}."
                          f"{type(module).__name__} has no QDQ converter yet", where=ctx.source,
                          hint="export the float model, or add a converter in converters/quant.py")


def _register_refusals() -> None:
    """Every other QAT/int8 class (ConvTranspose*, LinearBn*, BatchMatMulActivation) subclasses
    a float module; the MRO lookup would convert it as float, dropping its quantization."""
    import inspect

    from . import MODULE_CONVERTERS

    for namespace, base in ((QAT, QAT.QATModule), (Q, Q.QuantizedModule)):
        for cls in vars(namespace).values():
            if (inspect.isclass(cls) and issubclass(cls, base) and cls is not base
                    and cls not in MODULE_CONVERTERS):
                module_converter(cls)(_refuse)


_register_refusals()
