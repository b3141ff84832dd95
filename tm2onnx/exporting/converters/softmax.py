"""Softmax and LogSoftmax (functions and module) on any axis or several axes, with MegEngine's
default axis when none is given."""

from __future__ import annotations

from typing import Any

import megengine.functional as F
import megengine.module as M

from ..context import ExportContext
from . import function_converter, module_converter
from ._util import call_args
from .activation import cast_inputs
from .reduce import reduce_op


def emit_softmax(ctx: ExportContext, x: Any, axis: Any, outputs: list, *, log: bool) -> None:
    """One axis maps to (Log)Softmax; several are spelled out, shifted by the max as MegEngine
    does. A missing axis (softmax only) is MegEngine's default: 0 for rank 0, 1 and 3, else 1."""
    if axis is None:
        axis = 0 if len(x.shape) in (0, 1, 3) else 1
    axes = [int(a) for a in axis] if isinstance(axis, (list, tuple)) else [int(axis)]
    [value] = cast_inputs(ctx, [x], outputs)
    if len(axes) == 1:
        ctx.emit("LogSoftmax" if log else "Softmax", [value], outputs, axis=axes[0])
        return
    shifted = ctx.op("Sub", [value, reduce_op(ctx, "ReduceMax", value, axes, True)])
    exp = ctx.op("Exp", [shifted])
    total = reduce_op(ctx, "ReduceSum", exp, axes, True)
    if log:
        ctx.emit("Sub", [shifted, ctx.op("Log", [total])], outputs)
    else:
        ctx.emit("Div", [exp, total], outputs)


@function_converter(F.softmax)
def softmax(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_softmax(ctx, args["inp"], args["axis"], expr.outputs, log=False)


@function_converter(F.logsoftmax)
def logsoftmax(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_softmax(ctx, args["inp"], args["axis"], expr.outputs, log=True)


@module_converter(M.Softmax)
def softmax_module(ctx: ExportContext, expr: Any, module: Any) -> None:
    emit_softmax(ctx, expr.args[1], module.axis, expr.outputs, log=False)
