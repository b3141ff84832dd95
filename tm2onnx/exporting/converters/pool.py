"""Pooling: MaxPool2d/AvgPool2d and F.max_pool2d/F.avg_pool2d (MegEngine's "average" counts
padding, its default "average_count_exclude_padding" does not), and adaptive pooling, which
MegEngine defines as a plain pool with stride = in // out, kernel = in - (out - 1) * stride."""

from __future__ import annotations

from typing import Any

import megengine.functional as F
import megengine.module as M
import numpy as np
from megengine.traced_module.node import TensorNode

from ...errors import ConversionError
from ..context import ExportContext
from . import function_converter, module_converter
from ._util import call_args, pair, symmetric_pads

# MegEngine pooling mode -> (ONNX op, count_include_pad)
POOL_MODES = {"max": ("MaxPool", None), "average": ("AveragePool", 1),
              "average_count_exclude_padding": ("AveragePool", 0)}


def emit_pool(ctx: ExportContext, expr: Any, x: Any, *, kernel: Any, stride: Any,
              padding: Any, mode: str) -> None:
    key = str(mode).rsplit(".", 1)[-1].lower()  # a string, or a Pooling.Mode enum member
    if key not in POOL_MODES:
        raise ConversionError(f"{ctx.module_path or expr.outputs[0].name}: pooling "
                              f"mode={mode!r} has no ONNX form", where=ctx.source,
                              hint=f"use one of {sorted(POOL_MODES)}")
    op, count_include_pad = POOL_MODES[key]
    ctx.emit(op, [ctx.value_of(x)], expr.outputs, kernel_shape=pair(kernel),
             strides=pair(kernel if stride is None else stride),
             pads=symmetric_pads(padding, 2), count_include_pad=count_include_pad)


@module_converter(M.MaxPool2d)
def max_pool_module(ctx: ExportContext, expr: Any, pool: Any) -> None:
    emit_pool(ctx, expr, expr.inputs[1], kernel=pool.kernel_size, stride=pool.stride,
              padding=pool.padding, mode="max")


@module_converter(M.AvgPool2d)
def avg_pool_module(ctx: ExportContext, expr: Any, pool: Any) -> None:
    emit_pool(ctx, expr, expr.inputs[1], kernel=pool.kernel_size, stride=pool.stride,
              padding=pool.padding, mode=pool.mode)


@function_converter(F.max_pool2d)
def max_pool_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_pool(ctx, expr, args["inp"], kernel=args["kernel_size"], stride=args.get("stride"),
              padding=args.get("padding", 0), mode="max")


@function_converter(F.avg_pool2d)
def avg_pool_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_pool(ctx, expr, args["inp"], kernel=args["kernel_size"], stride=args.get("stride"),
              padding=args.get("padding", 0),
              mode=args.get("mode", "average_count_exclude_padding"))


def emit_adaptive_pool(ctx: ExportContext, expr: Any, x: Any, oshp: Any, *, op: str) -> None:
    """Global pooling for a 1x1 output; otherwise MegEngine's own window, which is exact for
    every input size (it is not PyTorch's overlapping adaptive window)."""
    where = ctx.module_path or expr.outputs[0].name
    out = _output_size(ctx, oshp, where)
    if x.shape is None or len(x.shape) != 4:
        raise ConversionError(f"{where}: adaptive pooling needs a 4-D NCHW input with a "
                              f"static shape, got {x.shape}", where=ctx.source,
                              hint="trace the model with a fixed input size")
    size = [int(d) for d in x.shape[2:]]
    if out == [1, 1]:
        ctx.emit(f"Global{op}", [ctx.value_of(x)], expr.outputs)
        return
    if any(o > i for o, i in zip(out, size)):
        raise ConversionError(f"{where}: adaptive output {out} is larger than the input "
                              f"{size}", where=ctx.source,
                              hint="MegEngine's window needs output <= input on each axis")
    stride = [i // o for i, o in zip(size, out)]
    kernel = [i - (o - 1) * s for i, o, s in zip(size, out, stride)]
    ctx.emit(op, [ctx.value_of(x)], expr.outputs, kernel_shape=kernel, strides=stride,
             pads=[0, 0, 0, 0])


@module_converter(M.AdaptiveAvgPool2d)
def adaptive_avg_module(ctx: ExportContext, expr: Any, pool: Any) -> None:
    emit_adaptive_pool(ctx, expr, expr.inputs[1], pool.oshp, op="AveragePool")


@module_converter(M.AdaptiveMaxPool2d)
def adaptive_max_module(ctx: ExportContext, expr: Any, pool: Any) -> None:
    emit_adaptive_pool(ctx, expr, expr.inputs[1], pool.oshp, op="MaxPool")


@function_converter(F.adaptive_avg_pool2d)
def adaptive_avg_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_adaptive_pool(ctx, expr, args["inp"], args["oshp"], op="AveragePool")


@function_converter(F.adaptive_max_pool2d)
def adaptive_max_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_adaptive_pool(ctx, expr, args["inp"], args["oshp"], op="MaxPool")


def _output_size(ctx: ExportContext, oshp: Any, where: str) -> list[int]:
    """(OH, OW) from an int, a pair, a Tensor, or a TensorNode known at export time."""
    if isinstance(oshp, TensorNode):
        if not ctx.is_known(oshp):
            raise ConversionError(f"{where}: adaptive pooling output size is computed at "
                                  "run time", where=ctx.source,
                                  hint="pass oshp as Python ints or a constant tensor")
        oshp = ctx.known(oshp)
    values = np.asarray(oshp.numpy() if hasattr(oshp, "numpy") else oshp).reshape(-1)
    return [int(v) for v in (list(values) * 2 if values.size == 1 else values)]
