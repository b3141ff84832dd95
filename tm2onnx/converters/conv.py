"""Convolutions: Conv1d/Conv2d/ConvTranspose2d modules, the fused ConvBn/ConvRelu family,
and F.conv1d/F.conv2d/F.conv_transpose2d."""

from __future__ import annotations

from typing import Any

import megengine.functional as F
import megengine.module as M
import numpy as np

from ..context import ExportContext
from ..errors import ConversionError
from . import function_converter, module_converter
from ._util import call_args, ntuple, symmetric_pads


def emit_conv(ctx: ExportContext, x: Any, weight: Any, bias: Any, outputs: list, *,
              spatial: int, stride: Any, padding: Any, dilation: Any, groups: int,
              transpose: bool = False) -> None:
    """One Conv/ConvTranspose node; weight/bias already ONNX tensors (bias may be None)."""
    inputs = [x, weight] + ([bias] if bias is not None else [])
    ctx.emit("ConvTranspose" if transpose else "Conv", inputs, outputs,
             strides=ntuple(stride, spatial), pads=symmetric_pads(padding, spatial),
             dilations=ntuple(dilation, spatial), group=int(groups))


def conv_bias(conv: Any) -> np.ndarray | None:
    return None if conv.bias is None else conv.bias.numpy().reshape(-1)


def _check_mode(ctx: ExportContext, conv: Any) -> None:
    mode = str(getattr(conv, "conv_mode", "cross_correlation")).lower()
    if "cross" not in mode:
        raise ConversionError(f"{ctx.module_path}: conv_mode={conv.conv_mode} has no ONNX form",
                              where=ctx.source, hint="use conv_mode='cross_correlation'")


@module_converter(M.Conv1d, M.Conv2d)
def conv_module(ctx: ExportContext, expr: Any, conv: Any) -> None:
    _check_mode(ctx, conv)
    spatial = 1 if isinstance(conv, M.Conv1d) else 2
    weight = conv.weight.numpy()
    if conv.groups > 1 and weight.ndim == spatial + 3:
        weight = weight.reshape(-1, *weight.shape[2:])
    bias = conv_bias(conv)
    emit_conv(ctx, ctx.value_of(expr.inputs[1]), ctx.param("weight", weight),
              ctx.param("bias", bias) if bias is not None else None, expr.outputs,
              spatial=spatial, stride=conv.stride, padding=conv.padding,
              dilation=conv.dilation, groups=conv.groups)


@module_converter(M.ConvTranspose2d)
def conv_transpose_module(ctx: ExportContext, expr: Any, conv: Any) -> None:
    _check_mode(ctx, conv)
    weight = conv.weight.numpy()
    if conv.groups > 1 and weight.ndim == 5:
        weight = weight.reshape(-1, *weight.shape[2:])
    bias = conv_bias(conv)
    emit_conv(ctx, ctx.value_of(expr.inputs[1]), ctx.param("weight", weight),
              ctx.param("bias", bias) if bias is not None else None, expr.outputs,
              spatial=2, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
              groups=conv.groups, transpose=True)


def _functional_conv(ctx: ExportContext, expr: Any, spatial: int, transpose: bool) -> None:
    args = call_args(expr)
    weight, bias, groups = args["weight"], args.get("bias"), int(args.get("groups", 1))
    weight_tensor = ctx.value_of(weight)
    if ctx.is_known(weight) and ctx.known(weight).ndim == spatial + 3:
        grouped = ctx.known(weight)
        weight_tensor = ctx.const(grouped.reshape(-1, *grouped.shape[2:]),
                                  name=f"{expr.outputs[0].name}.weight")
    bias_tensor = None
    if bias is not None:
        bias_tensor = ctx.op("Reshape", [ctx.value_of(bias), ctx.shape_const([-1])])
    emit_conv(ctx, ctx.value_of(args["inp"]), weight_tensor, bias_tensor, expr.outputs,
              spatial=spatial, stride=args.get("stride", 1), padding=args.get("padding", 0),
              dilation=args.get("dilation", 1), groups=groups, transpose=transpose)


@function_converter(F.conv1d)
def conv1d_function(ctx: ExportContext, expr: Any) -> None:
    _functional_conv(ctx, expr, 1, False)


@function_converter(F.conv2d)
def conv2d_function(ctx: ExportContext, expr: Any) -> None:
    _functional_conv(ctx, expr, 2, False)


@function_converter(F.conv_transpose2d)
def conv_transpose2d_function(ctx: ExportContext, expr: Any) -> None:
    _functional_conv(ctx, expr, 2, True)
