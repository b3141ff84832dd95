"""F.logsumexp the way MegEngine computes it (max + log(sum(exp(x - max))): stable for large
inputs, which ONNX's ReduceLogSumExp need not be), and the F.isnan / F.isinf predicates."""

from __future__ import annotations

from typing import Any

import megengine.functional as F

from ..context import ExportContext
from . import function_converter
from ._util import call_args, rank_of
from .reduce import reduce_axes, reduce_op


@function_converter(F.logsumexp)
def logsumexp(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    x_node = args["inp"]
    x = ctx.value_of(x_node)
    axes = reduce_axes(ctx, args["axis"], rank_of(x_node))  # MegEngine refuses axis=None
    peak = reduce_op(ctx, "ReduceMax", x, axes, True)
    total = reduce_op(ctx, "ReduceSum", ctx.op("Exp", [ctx.op("Sub", [x, peak])]), axes, True)
    result = ctx.op("Add", [ctx.op("Log", [total]), peak])
    if args["keepdims"]:
        ctx.emit("Identity", [result], expr.outputs)
        return
    # MegEngine squeezes every size-1 axis of the max and broadcasts it against the sum: the
    # values are the keepdims ones without the reduced axes (the guard checks the shape).
    ctx.emit("Squeeze", [result, ctx.shape_const(axes)], expr.outputs)


@function_converter(F.isnan)
def isnan(ctx: ExportContext, expr: Any) -> None:
    ctx.emit("IsNaN", [ctx.value_of(call_args(expr)["inp"])], expr.outputs)


@function_converter(F.isinf)
def isinf(ctx: ExportContext, expr: Any) -> None:
    ctx.emit("IsInf", [ctx.value_of(call_args(expr)["inp"])], expr.outputs)
