"""QAT / int8 BatchMatMulActivation: relu?(weight @ x + bias) with a (batch, out, in) int8
weight behind a DequantizeLinear, then Q/DQ. Each follows its own MegEngine forward: QAT adds
the bias on the last axis (numpy broadcasting), int8 per output channel (axis 1)."""

from __future__ import annotations

from typing import Any

import megengine.module.qat as QAT
import megengine.module.quantized as Q

from ...errors import ConversionError
from ..context import ExportContext
from . import module_converter
from ._qdq import check_opset, dq_bias, dq_weight, emit_qdq
from ._qmodule import QUANTIZED, act_qparams, float_bias, quantized_operand, quantized_weight

OUTPUT_AXIS = 1  # weight (batch, out, in)


def _check(ctx: ExportContext, expr: Any, mode: str) -> None:
    if mode not in ("identity", "relu"):
        raise ConversionError(f"{ctx.module_path}: nonlinear_mode={mode!r} is not supported",
                              where=ctx.source, hint="use 'identity' or 'relu'")
    if len(expr.inputs[1].shape) != 3:
        raise ConversionError(f"{ctx.module_path}: quantized BatchMatMulActivation input has "
                              f"shape {tuple(expr.inputs[1].shape)}, not (batch, in, n)",
                              where=ctx.source, hint="feed a 3-D (batch, in, n) input")


@module_converter(QAT.BatchMatMulActivation, Q.BatchMatMulActivation)
def quantized_batch_matmul(ctx: ExportContext, expr: Any, module: Any) -> None:
    check_opset(ctx)
    mode = str(module.nonlinear_mode).lower()
    _check(ctx, expr, mode)
    x, x_scale = quantized_operand(ctx, expr.inputs[1], module)
    integers, wqp = quantized_weight(ctx, module, layout=lambda w: w.reshape(w.shape[:3]),
                                     axis=OUTPUT_AXIS)
    if wqp.per_channel and getattr(ctx, "qdq_weights", "int8") == "uint8":
        raise ConversionError(f"{ctx.module_path}: per-channel weights stored as uint8 (zero "
                              "point 128 per channel) fail in onnxruntime's QLinearMatMul, "
                              "which takes one zero point", where=ctx.source,
                              hint="export with --qdq-weights int8")
    out = ctx.op("MatMul", [dq_weight(ctx, "weight", integers, wqp, axis=OUTPUT_AXIS), x])
    int8 = isinstance(module, QUANTIZED)  # int8 adds its (1, out, 1, 1) bias per channel
    bias = dq_bias(ctx, "bias", float_bias(module), wqp, x_scale,
                   shape=(-1, 1) if int8 else (-1,))
    out = out if bias is None else ctx.op("Add", [out, bias])
    emit_qdq(ctx, out, act_qparams(ctx, module), expr.outputs, relu=mode == "relu")
