"""Convolutions: Conv1d/2d/3d and ConvTranspose2d/3d modules (groups, depthwise, dilation,
padding modes, output_padding), and F.conv1d/conv2d/conv3d/conv_transpose2d/conv_transpose3d."""

from __future__ import annotations

from typing import Any

import megengine.functional as F
import megengine.module as M
import numpy as np

from ...errors import ConversionError
from ..context import ExportContext
from . import function_converter, module_converter
from ._util import call_args, cast_if_needed, ntuple, out_dtype, symmetric_pads, tensor_dtype

PAD_MODES = {"reflect": "reflect", "replicate": "edge"}  # MegEngine -> ONNX Pad mode
SPATIAL = {M.Conv1d: 1, M.Conv2d: 2, M.Conv3d: 3, M.ConvTranspose2d: 2, M.ConvTranspose3d: 3}


def emit_conv(ctx: ExportContext, x: Any, weight: Any, bias: Any, outputs: list, *,
              spatial: int, stride: Any, padding: Any, dilation: Any, groups: int,
              transpose: bool = False, output_padding: Any = 0) -> None:
    """One Conv/ConvTranspose node; weight/bias already ONNX tensors (bias may be None)."""
    inputs = [x, weight] + ([bias] if bias is not None else [])
    extra = {}
    if transpose and any(ntuple(output_padding, spatial)):
        extra["output_padding"] = ntuple(output_padding, spatial)
    ctx.emit("ConvTranspose" if transpose else "Conv", inputs, outputs,
             strides=ntuple(stride, spatial), pads=symmetric_pads(padding, spatial),
             dilations=ntuple(dilation, spatial), group=int(groups), **extra)


def ungrouped(weight: np.ndarray, spatial: int) -> np.ndarray:
    """MegEngine stores grouped weights as (G, O/G, I/G, k...) (ConvTranspose: (G, I/G, O/G,
    k...)); ONNX wants the group axis merged into the first: (O, I/G, k...) / (I, O/G, k...)."""
    if weight.ndim == spatial + 3:
        return weight.reshape(-1, *weight.shape[2:])
    return weight


def conv_bias(conv: Any) -> np.ndarray | None:
    return None if conv.bias is None else conv.bias.numpy().reshape(-1)


def check_conv(ctx: ExportContext, conv: Any) -> None:
    if "cross" not in str(getattr(conv, "conv_mode", "cross_correlation")).lower():
        raise ConversionError(f"{ctx.module_path}: conv_mode={conv.conv_mode} has no ONNX "
                              "form", where=ctx.source, hint="use conv_mode='cross_correlation'")
    mode = getattr(conv, "padding_mode", "zeros")
    if mode != "zeros" and mode not in PAD_MODES:
        raise ConversionError(f"{ctx.module_path}: padding_mode={mode!r} is not supported",
                              where=ctx.source, hint=f"use 'zeros' or one of {list(PAD_MODES)}")


def emit_conv_module(ctx: ExportContext, conv: Any, x: Any, outputs: list, *, spatial: int,
                     transpose: bool = False, prefix: str = "") -> None:
    """A Conv/ConvTranspose module's forward: explicit Pad for reflect/replicate padding
    (MegEngine pads, then convolves unpadded), weights cast to the output dtype."""
    check_conv(ctx, conv)
    padding = conv.padding
    mode = getattr(conv, "padding_mode", "zeros")
    if mode != "zeros":
        per_axis = ntuple(padding, spatial)
        x = ctx.op("Pad", [x, ctx.shape_const([0, 0, *per_axis, 0, 0, *per_axis])],
                   mode=PAD_MODES[mode])
        padding = 0
    dtype = out_dtype(ctx.expr)
    weight = ungrouped(conv.weight.numpy(), spatial).astype(dtype)
    bias = conv_bias(conv)
    emit_conv(ctx, x, ctx.param(f"{prefix}weight", weight),
              None if bias is None else ctx.param(f"{prefix}bias", bias.astype(dtype)),
              outputs, spatial=spatial, stride=conv.stride, padding=padding,
              dilation=conv.dilation, groups=conv.groups, transpose=transpose,
              output_padding=getattr(conv, "output_padding", 0))


@module_converter(*SPATIAL)
def conv_module(ctx: ExportContext, expr: Any, conv: Any) -> None:
    spatial = next(n for cls, n in SPATIAL.items() if isinstance(conv, cls))
    x = expr.inputs[1]
    value = cast_if_needed(ctx, ctx.value_of(x), tensor_dtype(x), out_dtype(expr))
    transpose = isinstance(conv, (M.ConvTranspose2d, M.ConvTranspose3d))
    emit_conv_module(ctx, conv, value, expr.outputs, spatial=spatial, transpose=transpose)


@module_converter(M.LocalConv2d, M.DeformableConv2d)
def unsupported_conv(ctx: ExportContext, expr: Any, conv: Any) -> None:
    # LocalConv2d subclasses Conv2d: without this the MRO would convert it as a plain Conv.
    raise ConversionError(f"{ctx.module_path}: {type(conv).__name__} (untied or deformable "
                          "weights) has no ONNX operator", where=ctx.source,
                          hint="replace it with Conv2d before tracing, or add a converter")


def _functional_conv(ctx: ExportContext, expr: Any, spatial: int, transpose: bool) -> None:
    args = call_args(expr)
    weight, bias = args["weight"], args.get("bias")
    if str(args.get("conv_mode", "cross_correlation")).lower().find("cross") < 0:
        raise ConversionError(f"%{expr._id}: conv_mode={args['conv_mode']} has no ONNX form",
                              where=ctx.source, hint="use conv_mode='cross_correlation'")
    weight_tensor = ctx.value_of(weight)
    if ctx.is_known(weight) and ctx.known(weight).ndim == spatial + 3:
        weight_tensor = ctx.const(ungrouped(ctx.known(weight), spatial),
                                  name=f"{expr.outputs[0].name}.weight")
    bias_tensor = None
    if bias is not None and ctx.is_known(bias):
        bias_tensor = ctx.const(ctx.known(bias).reshape(-1), name=f"{expr.outputs[0].name}.bias")
    elif bias is not None:
        bias_tensor = ctx.op("Reshape", [ctx.value_of(bias), ctx.shape_const([-1])])
    emit_conv(ctx, ctx.value_of(args["inp"]), weight_tensor, bias_tensor, expr.outputs,
              spatial=spatial, stride=args.get("stride", 1), padding=args.get("padding", 0),
              dilation=args.get("dilation", 1), groups=int(args.get("groups", 1)),
              transpose=transpose, output_padding=args.get("output_padding", 0))


def _register_functional(function: Any, spatial: int, transpose: bool) -> None:
    function_converter(function)(
        lambda ctx, expr: _functional_conv(ctx, expr, spatial, transpose))


for _function, _spatial, _transpose in ((F.conv1d, 1, False), (F.conv2d, 2, False),
                                        (F.conv3d, 3, False), (F.conv_transpose2d, 2, True),
                                        (F.conv_transpose3d, 3, True)):
    _register_functional(_function, _spatial, _transpose)
