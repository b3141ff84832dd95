"""Resizing, padding and tensor creation: F.nn.interpolate, F.nn.pad / M.Pad, F.one_hot,
zeros/ones/full/arange and the `_like` forms with runtime inputs, astype, cumsum,
gather/scatter and the M.Concat module."""

from __future__ import annotations

from typing import Any

import megengine.functional as F
import megengine.module as M
import numpy as np
from megengine.core.tensor.dtype import is_quantize

from ...errors import ConversionError
from ..context import ExportContext
from . import function_converter, method_converter, module_converter
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

# MegEngine's Resize kernels follow OpenCV: pixel centres (half_pixel) for linear and cubic
# (a = -0.75), floor(dst * in / out) for nearest; align_corners goes through warp_perspective.
RESIZE_MODES = {"nearest": ("nearest", "asymmetric"), "linear": ("linear", "half_pixel"),
                "bilinear": ("linear", "half_pixel"), "trilinear": ("linear", "half_pixel"),
                "bicubic": ("cubic", "half_pixel")}
PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "edge": "edge"}


def _input_as(ctx: ExportContext, node: Any, dtype: np.dtype) -> Any:
    return cast_if_needed(ctx, ctx.value_of(node), tensor_dtype(node), dtype)


def _resize_sizes(ctx: ExportContext, x: Any, out_shape: list[int]) -> Any:
    """Resize `sizes` (never `scales`: MegEngine maps coordinates with in/out of the sizes)."""
    if not ctx.dynamic_batch:
        return ctx.shape_const(out_shape)
    batch = ctx.op("Slice", [ctx.op("Shape", [x]), ctx.shape_const([0]), ctx.shape_const([1])])
    return ctx.op("Concat", [batch, ctx.shape_const(out_shape[1:])], axis=0)


@function_converter(F.nn.interpolate)
def interpolate(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_resize(ctx, expr, args["inp"], str(args["mode"]).lower(), bool(args["align_corners"]))


def emit_resize(ctx: ExportContext, expr: Any, x_node: Any, mode: str,
                align_corners: bool) -> None:
    """Resize to the output node's size (of this call) in MegEngine's coordinate mapping."""
    if mode not in RESIZE_MODES:
        raise ConversionError(f"{ctx.base_name}: interpolate mode={mode!r} has no ONNX form",
                              where=ctx.source, hint=f"use one of {sorted(RESIZE_MODES)}")
    onnx_mode, transform = RESIZE_MODES[mode]
    if align_corners:
        transform = "align_corners"
    x = _input_as(ctx, x_node, out_dtype(expr))  # MegEngine resizes float16 as float32
    out_shape = list(expr.outputs[0].shape)
    if mode == "linear":  # MegEngine resizes (N, C, L) as (N, C, L, 1)
        x = ctx.op("Unsqueeze", [x, ctx.shape_const([3])])
        out_shape.append(1)
    attrs = {"mode": onnx_mode, "coordinate_transformation_mode": transform,
             "nearest_mode": "floor" if onnx_mode == "nearest" else None,
             "cubic_coeff_a": -0.75 if onnx_mode == "cubic" else None}
    inputs = [x, "", "", _resize_sizes(ctx, x, out_shape)]
    if mode == "linear":
        resized = ctx.op("Resize", inputs, **attrs)
        ctx.emit("Squeeze", [resized, ctx.shape_const([3])], expr.outputs)
    else:
        ctx.emit("Resize", inputs, expr.outputs, **attrs)


def emit_pad(ctx: ExportContext, expr: Any, x_node: Any, pad_width: Any, mode: str,
             value: float) -> None:
    rank, mode = rank_of(x_node), str(mode).lower()
    pairs = [as_list(pair) for pair in as_list(pad_width)]
    if mode not in PAD_MODES or len(pairs) > rank:
        raise ConversionError(f"{ctx.base_name}: pad mode={mode!r}, pad_width={pad_width} on a "
                              f"{rank}-d tensor", where=ctx.source,
                              hint=f"use a mode of {sorted(PAD_MODES)}, one pair per leading axis")
    pairs += [[0, 0]] * (rank - len(pairs))
    # widths may be TensorNodes computed from x.shape (padding to a multiple of a window):
    # folded to a constant when known, else a Concat of run-time pieces (Pad takes a tensor)
    pads = int64_vector(ctx, [pair[0] for pair in pairs] + [pair[1] for pair in pairs])
    inputs = [ctx.value_of(x_node), pads]
    if mode == "constant":
        inputs.append(ctx.const(np.asarray(value).astype(tensor_dtype(x_node))))
    ctx.emit("Pad", inputs, expr.outputs, mode=PAD_MODES[mode])


@function_converter(F.nn.pad)
def pad_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_pad(ctx, expr, args["src"], args["pad_width"], args["mode"], args["constant_value"])


@module_converter(M.Pad)
def pad_module(ctx: ExportContext, expr: Any, pad: Any) -> None:
    emit_pad(ctx, expr, expr.inputs[1], pad.pad_width, pad.mode, pad.pad_val)


@function_converter(F.one_hot)
def one_hot(ctx: ExportContext, expr: Any) -> None:
    """Equal against 0..num_classes-1: every runtime has it, unlike OneHot's dtype combinations."""
    args = call_args(expr)
    indices = ctx.value_of(args["inp"])
    classes = np.arange(int(args["num_classes"]), dtype=tensor_dtype(args["inp"]))
    column = ctx.op("Unsqueeze", [indices, ctx.shape_const([-1])])
    hot = ctx.op("Equal", [column, ctx.const(classes)])
    ctx.emit("Cast", [hot], expr.outputs, to=onnx_dtype(out_dtype(expr)))


def _fill(ctx: ExportContext, expr: Any, value: Any, shape: Any) -> None:
    """`value` (a number or a scalar TensorNode) broadcast to `shape` (an int64 tensor)."""
    want = out_dtype(expr)
    if hasattr(value, "expr"):
        scalar = _input_as(ctx, value, want)
    else:
        scalar = ctx.const(np.asarray(value).astype(want))
    ctx.emit("Expand", [scalar, shape], expr.outputs)


def _shape_vector(ctx: ExportContext, shape: Any) -> Any:
    return int64_vector(ctx, as_list(shape))


@function_converter(F.zeros)
def zeros(ctx: ExportContext, expr: Any) -> None:
    _fill(ctx, expr, 0, _shape_vector(ctx, call_args(expr)["shape"]))


@function_converter(F.ones)
def ones(ctx: ExportContext, expr: Any) -> None:
    _fill(ctx, expr, 1, _shape_vector(ctx, call_args(expr)["shape"]))


@function_converter(F.full)
def full(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _fill(ctx, expr, args["value"], _shape_vector(ctx, args["shape"]))


def _like(value: Any):
    def convert(ctx: ExportContext, expr: Any) -> None:
        args = call_args(expr)
        fill = args["value"] if value is None else value
        _fill(ctx, expr, fill, ctx.op("Shape", [ctx.value_of(args["inp"])]))
    return convert


function_converter(F.zeros_like)(_like(0))
function_converter(F.ones_like)(_like(1))
function_converter(F.full_like)(_like(None))


def _float_scalar(ctx: ExportContext, value: Any) -> Any:
    if not hasattr(value, "expr"):
        return ctx.const(np.asarray(value, dtype=np.float32))
    scalar = _input_as(ctx, value, np.dtype(np.float32))
    return ctx.op("Reshape", [scalar, ctx.shape_const([])])


@function_converter(F.arange)
def arange(ctx: ExportContext, expr: Any) -> None:
    """MegEngine computes arange in float32 (via linspace) and casts to `dtype` afterwards."""
    args = call_args(expr)
    start, stop, step = args["start"], args["stop"], args["step"]
    if stop is None:
        start, stop = 0, start
    bounds = [_float_scalar(ctx, v) for v in (start, stop, step)]
    want = out_dtype(expr)
    if want == np.float32:
        ctx.emit("Range", bounds, expr.outputs)
    else:
        ctx.emit("Cast", [ctx.op("Range", bounds)], expr.outputs, to=onnx_dtype(want))


@method_converter("astype")
def astype(ctx: ExportContext, expr: Any) -> None:
    want = out_dtype(expr)
    if is_quantize(expr.outputs[0].dtype) or is_quantize(expr.inputs[0].dtype):
        raise ConversionError(f"{ctx.base_name}: astype to or from a quantized dtype "
                              f"({expr.outputs[0].dtype})", where=ctx.source,
                              hint="export the float model; quantize the ONNX model afterwards")
    ctx.emit("Cast", [ctx.value_of(expr.inputs[0])], expr.outputs, to=onnx_dtype(want))


@function_converter(F.cumsum)
def cumsum(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    axis = normalize_axis(int(args["axis"]), rank_of(args["inp"]))
    ctx.emit("CumSum", [ctx.value_of(args["inp"]), ctx.const(np.asarray(axis, np.int64))],
             expr.outputs)


@function_converter(F.gather)
def gather(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    ctx.emit("GatherElements", [ctx.value_of(args["inp"]), ctx.value_of(args["index"])],
             expr.outputs, axis=normalize_axis(int(args["axis"]), rank_of(args["inp"])))


@function_converter(F.scatter)
def scatter(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    source = _input_as(ctx, args["source"], out_dtype(expr))
    ctx.emit("ScatterElements", [ctx.value_of(args["inp"]), ctx.value_of(args["index"]), source],
             expr.outputs, axis=normalize_axis(int(args["axis"]), rank_of(args["inp"])))


@module_converter(M.Concat)
def concat_module(ctx: ExportContext, expr: Any, concat: Any) -> None:
    args = call_args(expr)
    want = out_dtype(expr)
    pieces = [_input_as(ctx, node, want) if hasattr(node, "expr") else
              ctx.const(np.asarray(node, dtype=want)) for node in args["inps"]]
    # a 0-d input concatenates as shape (1,) in MegEngine (ONNX Concat needs rank >= 1)
    ranks = [len(node.shape) if hasattr(node, "expr") else np.ndim(node) for node in args["inps"]]
    pieces = [ctx.op("Reshape", [piece, ctx.shape_const([1])]) if rank == 0 else piece
              for rank, piece in zip(ranks, pieces)]
    ctx.emit("Concat", pieces, expr.outputs,
             axis=normalize_axis(int(args["axis"]), len(expr.outputs[0].shape)))
