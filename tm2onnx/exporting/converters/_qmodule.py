"""Where MegEngine keeps a QAT / int8 module's quantization: output and weight parameters, the
integer weight (BN folded with MegEngine's own ops), its input as a DequantizeLinear, and the
quantized Conv / ConvTranspose emission. Shared by converters/quant*.py, which register them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import megengine.functional as F
import megengine.module.qat as QAT
import megengine.module.quantized as Q
import numpy as np

from ...errors import ConversionError
from ..context import ExportContext
from ._qdq import (
    QParams,
    dq_bias,
    dq_weight,
    emit_qdq,
    from_dtype,
    from_megengine,
    quantized_input,
)
from .conv import check_conv, emit_conv, ungrouped
from .fused import _Hidden

RELU_MODULES = (QAT.ConvRelu2d, QAT.ConvBnRelu2d, QAT.LinearRelu, QAT.ConvTransposeRelu2d,
                QAT.ConvTransposeBnRelu2d, QAT.LinearBnRelu1d, Q.ConvRelu2d, Q.ConvBnRelu2d,
                Q.LinearRelu, Q.ConvTransposeRelu2d, Q.ConvTransposeBnRelu2d, Q.LinearBnRelu1d)
QUANTIZED = Q.QuantizedModule  # int8 modules: stored int8 weights, quantized output dtype


def only_observes(module: Any) -> bool:
    """A QAT module built with calibration_qconfig: observers, no fake quantization, so its
    forward is float and its only deployed form is what `quantize()` makes of it."""
    return (isinstance(module, QAT.QATModule)
            and getattr(module, "act_observer", None) is not None
            and getattr(module, "act_fake_quant", None) is None
            and getattr(module, "weight_fake_quant", None) is None)


def deploys_int8(module: Any) -> bool:
    """Whether the export computes what MegEngine's int8 kernels do (inputs rounded onto their
    grid, also after averaging ops): int8 modules, and QAT modules that only observe."""
    return isinstance(module, QUANTIZED) or only_observes(module)


def act_qparams(ctx: ExportContext, module: Any) -> QParams:
    """The output quantization MegEngine's `quantize` would give this module."""
    if isinstance(module, QUANTIZED):
        return from_dtype(ctx, getattr(module, "output_dtype", None), "output")
    return from_megengine(ctx, module.get_activation_qparams(), "activation")


def quantized_weight(ctx: ExportContext, module: Any, weight: np.ndarray | None = None, *,
                     layout: Callable[[np.ndarray], np.ndarray] | None = None, axis: int = 0
                     ) -> tuple[np.ndarray, QParams]:
    """Integer weight in ONNX layout and its parameters: the stored int8 weight for int8
    modules, else the float (folded) weight quantized with the weight observer / fake-quant's
    scale. `layout` maps MegEngine's weight layout to ONNX's, whose `axis` holds the output
    channels (a per-channel scale must have one value per channel there)."""
    layout = layout or (lambda values: values)
    if isinstance(module, QUANTIZED):
        qp = from_dtype(ctx, module.weight.dtype, "weight")
        return layout(module.weight.numpy()).astype(np.int64), qp
    qparams = module.get_weight_qparams()
    qp = from_megengine(ctx, qparams, "weight")
    raw = module.weight.numpy() if weight is None else weight
    values = layout(raw)
    if qp.per_channel and not _scale_on_axis(qparams.scale, raw, layout, values, axis):
        raise ConversionError(f"{ctx.module_path}: weight scale of shape "
                              f"{tuple(qparams.scale.shape)} is not one scale per output channel "
                              f"of weight {raw.shape} (ONNX weight {values.shape}, output "
                              f"channels on axis {axis})", where=ctx.source,
                              hint="use one scale per tensor or per output channel")
    return qp.quantize(values, axis), qp


def _scale_on_axis(scale: Any, raw: np.ndarray, layout: Callable[[np.ndarray], np.ndarray],
                   values: np.ndarray, axis: int) -> bool:
    """Whether the scale MegEngine broadcasts over its weight layout is, in ONNX's layout, one
    value per index of `axis` (what a per-axis DequantizeLinear expresses)."""
    scale = np.asarray(scale.numpy() if hasattr(scale, "numpy") else scale, np.float32)
    try:
        placed = layout(np.broadcast_to(scale, raw.shape).copy())
    except ValueError:
        return False
    if values.shape[axis] != scale.size:
        return False
    shape = [1] * values.ndim
    shape[axis] = -1
    return np.array_equal(placed, np.broadcast_to(scale.reshape(shape), values.shape))


def folded_bn(layer: Any, bn: Any, factor_shape: tuple[int, ...]
              ) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode fold of `bn` into `layer`'s weight and bias with MegEngine's own ops in its
    order (calc_conv_bn_qat, fold_weight_bias): the folded weight is what gets quantized.
    `factor_shape` puts the per-output-channel factor on the weight's output axis."""
    channels = bn.num_features
    gamma = (bn.weight if bn.weight is not None else F.ones(channels)).reshape(-1)
    beta = (bn.bias if bn.bias is not None else F.zeros(channels)).reshape(-1)
    bias = layer.bias.reshape(-1) if layer.bias is not None else F.zeros(channels)
    istd = 1.0 / F.sqrt(bn.running_var.reshape(-1) + bn.eps)
    factor = gamma * istd
    weight = layer.weight * factor.reshape(*factor_shape)
    bias = beta + gamma * (bias - bn.running_mean.reshape(-1)) * istd
    return weight.numpy(), bias.numpy().reshape(-1)


def float_bias(module: Any) -> np.ndarray | None:
    return None if module.bias is None else module.bias.numpy().reshape(-1)


def quantized_operand(ctx: ExportContext, node: Any, module: Any) -> tuple[Any, Any]:
    """A quantized op's input as a DequantizeLinear output, and its scale. QAT modules take
    float input where MegEngine did not fake-quantize it; int8 modules always run on
    quantized input."""
    int8 = isinstance(module, QUANTIZED)
    value, scale = quantized_input(ctx, node, rounded=deploys_int8(module))
    if int8 and scale is None:
        raise ConversionError(f"{ctx.module_path}: cannot tell the quantization of input "
                              f"'{node.name}' (no QuantStub or quantized module before it)",
                              where=ctx.source, hint="put a QuantStub before the first "
                                                     "quantized module")
    return value, scale


def emit_quantized_conv(ctx: ExportContext, expr: Any, module: Any, conv: Any,
                        weight: np.ndarray | None, bias: np.ndarray | None, *,
                        transpose: bool = False) -> None:
    """DQ(int8 weight), DQ(int32 bias) -> Conv / ConvTranspose -> Q[->Clip]->DQ. `conv` holds
    stride/padding; `weight`/`bias` are the float (folded) ones, None to read the module's.
    ONNX's ConvTranspose weight is (in, out/groups, kh, kw): per-channel scales on axis 1."""
    check_conv(ctx, conv)
    if getattr(conv, "padding_mode", "zeros") != "zeros":
        raise ConversionError(f"{ctx.module_path}: padding_mode={conv.padding_mode!r} in a "
                              "quantized conv is not supported", where=ctx.source,
                              hint="use zero padding")
    axis = 1 if transpose else 0
    x, x_scale = quantized_operand(ctx, expr.inputs[1], module)
    integers, wqp = quantized_weight(ctx, module, weight, layout=lambda w: ungrouped(w, 2),
                                     axis=axis)
    hidden = _Hidden(f"{ctx.base_name}/{'conv_transpose' if transpose else 'conv'}", np.float32)
    emit_conv(ctx, x, dq_weight(ctx, "weight", integers, wqp, axis=axis),
              dq_bias(ctx, "bias", bias, wqp, x_scale), [hidden], spatial=2,
              stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
              groups=conv.groups, transpose=transpose,
              output_padding=getattr(conv, "output_padding", 0))
    emit_qdq(ctx, ctx.value_of(hidden), act_qparams(ctx, module), expr.outputs,
             relu=isinstance(module, RELU_MODULES))
