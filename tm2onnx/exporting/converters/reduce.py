"""Reductions: F.sum/mean/max/min/prod and the tensor methods, F.var/std/norm, F.argmax/argmin,
F.topk. ReduceSum takes `axes` as an input from opset 13, the other Reduce* only from opset 18;
MegEngine returns int32 indices where ONNX gives int64, so indices are cast back."""

from __future__ import annotations

import math
from typing import Any

import megengine.functional as F
import numpy as np

from ...errors import ConversionError
from ..context import ExportContext
from . import function_converter, method_converter
from ._util import (
    as_list,
    call_args,
    cast_if_needed,
    int64_vector,
    normalize_axis,
    onnx_dtype,
    out_dtype,
    rank_of,
    tensor_dtype,
)

REDUCE_OPS = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin",
              "prod": "ReduceProd"}


def reduce_axes(ctx: ExportContext, axis: Any, rank: int) -> list[int] | None:
    """Sorted non-negative axes, or None for "all axes"."""
    if axis is None:
        return None
    if hasattr(axis, "expr"):
        if not ctx.is_known(axis):
            raise ConversionError(f"{ctx.base_name}: a runtime tensor as reduction axis",
                                  where=ctx.source, hint="pass axis as Python ints")
        axis = ctx.known(axis).tolist()
    return sorted({normalize_axis(int(a), rank) for a in as_list(axis)})


def reduce_form(ctx: ExportContext, op: str, x: Any, axes: list[int] | None,
                keepdims: bool) -> tuple[list, dict]:
    """Inputs and attributes of a Reduce* node for ctx.opset (axes: attribute or input)."""
    attrs = {"keepdims": int(bool(keepdims))}
    if axes is None:
        return [x], attrs
    if ctx.opset >= (13 if op == "ReduceSum" else 18):
        return [x, ctx.shape_const(axes)], attrs
    return [x], {**attrs, "axes": axes}


def reduce_op(ctx: ExportContext, op: str, x: Any, axes: list[int] | None,
              keepdims: bool) -> Any:
    inputs, attrs = reduce_form(ctx, op, x, axes, keepdims)
    return ctx.op(op, inputs, **attrs)


def _input_as(ctx: ExportContext, node: Any, dtype: np.dtype) -> Any:
    return cast_if_needed(ctx, ctx.value_of(node), tensor_dtype(node), dtype)


def emit_reduce(ctx: ExportContext, expr: Any, op: str, x_node: Any, axis: Any,
                keepdims: bool) -> None:
    want = out_dtype(expr)
    # int mean is float in MegEngine: reduce in the output dtype; bool max/min go through int32
    compute = np.dtype(np.int32) if want == np.bool_ else want
    x = _input_as(ctx, x_node, compute)
    inputs, attrs = reduce_form(ctx, op, x, reduce_axes(ctx, axis, rank_of(x_node)), keepdims)
    if compute == want:
        ctx.emit(op, inputs, expr.outputs, **attrs)
    else:
        ctx.emit("Cast", [ctx.op(op, inputs, **attrs)], expr.outputs, to=onnx_dtype(want))


def _reduce(op: str):
    def convert(ctx: ExportContext, expr: Any) -> None:
        args = call_args(expr)
        x_node = args["inp"] if "inp" in args else args["self"]
        emit_reduce(ctx, expr, op, x_node, args["axis"], args["keepdims"])
    return convert


for _name, _op in REDUCE_OPS.items():
    function_converter(getattr(F, _name))(_reduce(_op))
    method_converter(_name)(_reduce(_op))


def _variance(ctx: ExportContext, expr: Any) -> tuple[Any, list, dict]:
    """mean((x - mean(x))**2) as MegEngine's F.var computes it; returns the last node's form."""
    args = call_args(expr)
    x = _input_as(ctx, args["inp"], out_dtype(expr))
    axes = reduce_axes(ctx, args["axis"], rank_of(args["inp"]))
    diff = ctx.op("Sub", [x, reduce_op(ctx, "ReduceMean", x, axes, True)])
    return reduce_form(ctx, "ReduceMean", ctx.op("Mul", [diff, diff]), axes, args["keepdims"])


@function_converter(F.var)
def var(ctx: ExportContext, expr: Any) -> None:
    inputs, attrs = _variance(ctx, expr)
    ctx.emit("ReduceMean", inputs, expr.outputs, **attrs)


@function_converter(F.std)
def std(ctx: ExportContext, expr: Any) -> None:
    inputs, attrs = _variance(ctx, expr)
    ctx.emit("Sqrt", [ctx.op("ReduceMean", inputs, **attrs)], expr.outputs)


@function_converter(F.norm)
def norm(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    order = 2 if args["ord"] is None else float(args["ord"])
    want, keepdims = out_dtype(expr), args["keepdims"]
    x_node = args["inp"]
    if math.isinf(order):  # MegEngine ignores axis and keepdims for +-inf
        op = "ReduceMax" if order > 0 else "ReduceMin"
        magnitude = ctx.op("Abs", [_input_as(ctx, x_node, want)])
        ctx.emit(op, [magnitude], expr.outputs, keepdims=0)
        return
    axes = reduce_axes(ctx, args["axis"], rank_of(x_node))
    if order == 0:
        zero = ctx.const(np.zeros((), dtype=tensor_dtype(x_node)))
        nonzero = ctx.op("Not", [ctx.op("Equal", [ctx.value_of(x_node), zero])])
        inputs, attrs = reduce_form(ctx, "ReduceSum", ctx.op("Cast", [nonzero], to=onnx_dtype(
            want)), axes, keepdims)
        ctx.emit("ReduceSum", inputs, expr.outputs, **attrs)
        return
    x = _input_as(ctx, x_node, want)
    if order in (1, 2):
        op = "ReduceL1" if order == 1 else "ReduceL2"
        inputs, attrs = reduce_form(ctx, op, x, axes, keepdims)
        ctx.emit(op, inputs, expr.outputs, **attrs)
        return
    powered = ctx.op("Pow", [ctx.op("Abs", [x]), ctx.const(np.asarray(order, dtype=want))])
    total = reduce_op(ctx, "ReduceSum", powered, axes, keepdims)
    ctx.emit("Pow", [total, ctx.const(np.asarray(1.0 / order, dtype=want))], expr.outputs)


def _arg_reduce(op: str):
    def convert(ctx: ExportContext, expr: Any) -> None:
        args = call_args(expr)
        x_node, keepdims = args["inp"], int(bool(args["keepdims"]))
        x = ctx.value_of(x_node)
        if args["axis"] is None:
            x, axes = ctx.op("Reshape", [x, ctx.shape_const([-1])]), [0]
        else:  # MegEngine applies one arg-reduction per axis, last axis first
            axes = sorted(reduce_axes(ctx, args["axis"], rank_of(x_node)), reverse=True)
        want = onnx_dtype(out_dtype(expr))
        for index, axis in enumerate(axes):
            found = ctx.op(op, [x], axis=axis, keepdims=keepdims)
            if index == len(axes) - 1:
                ctx.emit("Cast", [found], expr.outputs, to=want)
            else:
                x = ctx.op("Cast", [found], to=want)
    return convert


function_converter(F.argmax)(_arg_reduce("ArgMax"))
function_converter(F.argmin)(_arg_reduce("ArgMin"))


@function_converter(F.topk)
def topk(ctx: ExportContext, expr: Any) -> None:
    """Sorted TopK on the last axis; `no_sort` gets sorted results (a valid unordered answer);
    `kth_only` keeps the k-th value and MegEngine's first-equal-element index. k is bounded by
    the axis length, as MegEngine bounds it (ONNX TopK requires k <= axis length)."""
    args = call_args(expr)
    x = ctx.value_of(args["inp"])
    k = bounded_k(ctx, args["inp"], args["k"])
    values, indices = ctx.op("TopK", [x, k], outputs=2, axis=-1,
                             largest=int(bool(args["descending"])), sorted=1)
    index_dtype = onnx_dtype(out_dtype(expr, 1))
    if not args["kth_only"]:
        ctx.emit("Identity", [values], expr.outputs[:1])
        ctx.emit("Cast", [indices], expr.outputs[1:], to=index_dtype)
        return
    last = ctx.shape_const([-1])
    start = ctx.op("Sub", [k, ctx.shape_const([1])])
    kth = ctx.op("Slice", [values, start, k, last])
    ctx.emit("Squeeze", [kth, last], expr.outputs[:1])
    equal = ctx.op("Cast", [ctx.op("Equal", [kth, x])], to=onnx_dtype(np.int32))
    first = ctx.op("ArgMax", [equal], axis=-1, keepdims=0)
    ctx.emit("Cast", [first], expr.outputs[1:], to=index_dtype)


def bounded_k(ctx: ExportContext, x_node: Any, k: Any) -> Any:
    """min(k, x.shape[-1]) as a 1-element int64 tensor: MegEngine's topk with k larger than
    the axis returns the whole axis (an RPN level with fewer anchors than pre_nms_top_n).
    A constant when k and the axis length are both known at export time; else a Min with the
    length read at run time (after NonZero, or with a dynamic batch that may reach the axis)."""
    from .detection import axis_size

    static_axis = not ctx.dynamic_batch and not ctx.has_runtime_shape(x_node)
    static_k = not (hasattr(k, "expr") and not ctx.is_known(k))
    if static_axis and static_k:
        value = int(np.asarray(ctx.known(k) if hasattr(k, "expr") else k).reshape(-1)[0])
        return ctx.shape_const([min(value, int(x_node.shape[-1]))])
    return ctx.op("Min", [int64_vector(ctx, [k]), axis_size(ctx, x_node, -1)])
