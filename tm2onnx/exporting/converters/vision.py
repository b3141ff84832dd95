"""Image-space ops: F.roll (Slice+Concat), F.linspace with runtime pieces (Range arithmetic),
F.vision.remap and F.vision.warp_perspective (GridSample on a pixel grid, opset 16+); their
raw OpDefs (Linspace, Remap, WarpPerspective) too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import megengine.functional as F
import numpy as np
from megengine.core.ops import builtin

from ...errors import ConversionError
from ..context import ExportContext
from . import apply_converter, function_converter
from ._util import as_list, call_args, cast_if_needed, normalize_axis, onnx_dtype, out_dtype
from .detection import data_dependent, enum_name
from .misc import _float_scalar as float_scalar

GRID_SAMPLE_OPSET = 16
LINEAR_RENAMED_OPSET = 20  # GridSample-20 calls bilinear "linear"
INT64_MAX = int(np.iinfo(np.int64).max)
# MegEngine border modes -> GridSample padding_mode; "constant" is zeros shifted by the scalar.
# Its per-pixel border indexing equals GridSample's continuous clamp/reflection about -0.5.
BORDER_MODES = {"replicate": "border", "constant": "zeros", "reflect": "reflection"}
INTERP_MODES = {"linear": "bilinear", "nearest": "nearest"}


def _refuse(ctx: ExportContext, what: str, hint: str) -> ConversionError:
    return ConversionError(f"{ctx.base_name}: {what}", where=ctx.source, hint=hint)


# ---- roll ------------------------------------------------------------------------------------
def _roll_axis(ctx: ExportContext, x: Any, size: int, shift: int, axis: int) -> Any:
    """x rolled by `shift` along `axis` of static `size`: Concat(x[size-s:], x[:size-s])."""
    cut = size - shift % size
    axes = ctx.shape_const([axis])
    tail = ctx.op("Slice", [x, ctx.shape_const([cut]), ctx.shape_const([INT64_MAX]), axes])
    head = ctx.op("Slice", [x, ctx.shape_const([0]), ctx.shape_const([cut]), axes])
    return ctx.op("Concat", [tail, head], axis=axis)


@function_converter(F.roll)
def roll(ctx: ExportContext, expr: Any) -> None:
    """One Slice pair and Concat per shifted axis (Swin's cyclic window shift); `axis=None`
    rolls the flattened tensor. The rolled sizes must be static."""
    args = call_args(expr)
    node = args["inp"]
    shape = [int(d) for d in node.shape]
    shifts, axes = as_list(args["shift"]), as_list(args["axis"])
    x, flattened = ctx.value_of(node), not axes
    if flattened:
        x, shape, axes = ctx.op("Reshape", [x, ctx.shape_const([-1])]), [int(np.prod(shape))], [0]
    axes = [normalize_axis(int(a), len(shape)) for a in axes]
    batch = ctx.dynamic_batch and (flattened or any(ctx.is_batch_axis(node, a) for a in axes))
    if ctx.has_runtime_shape(node) or batch:
        raise _refuse(ctx, "roll over an axis whose size is known only at run time",
                      "roll static axes, or export without dynamic_batch")
    for shift, axis in zip(shifts, axes):
        if shape[axis] and int(shift) % shape[axis]:
            x = _roll_axis(ctx, x, shape[axis], int(shift), axis)
    ctx.emit("Reshape", [x, ctx.shape_const([0 if ctx.dynamic_batch else d for d in node.shape])],
             expr.outputs)


# ---- linspace --------------------------------------------------------------------------------
def _linspace(ctx: ExportContext, expr: Any, start: Any, stop: Any, num: Any,
              endpoint: bool = True) -> None:
    """start + i * (stop - start) / max(num - 1, 1) for i in Range(num) (num without endpoint):
    reached only when a piece is computed at run time (static linspace is folded at export)."""
    start, stop, count = (float_scalar(ctx, value) for value in (start, stop, num))
    one = ctx.const(np.asarray(1, np.float32))
    index = ctx.op("Range", [ctx.const(np.asarray(0, np.float32)), count, one])
    spans = ctx.op("Max", [ctx.op("Sub", [count, one]), one]) if endpoint else count
    step = ctx.op("Div", [ctx.op("Sub", [stop, start]), spans])
    values = ctx.op("Add", [start, ctx.op("Mul", [index, step])])
    variables = ctx.emit("Cast", [values], expr.outputs, to=onnx_dtype(out_dtype(expr)))
    if hasattr(num, "expr") and not ctx.is_known(num):
        data_dependent(ctx, variables, expr.outputs)


@function_converter(F.linspace)
def linspace(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _linspace(ctx, expr, args["start"], args["stop"], args["num"])


@apply_converter(builtin.Linspace)
def linspace_opdef(ctx: ExportContext, expr: Any) -> None:
    _linspace(ctx, expr, *expr.inputs[:3], endpoint=bool(expr.opdef.endpoint))


# ---- GridSample from pixel coordinates --------------------------------------------------------
def _grid_sample_attrs(ctx: ExportContext, border: str, interp: str) -> dict[str, Any]:
    if ctx.opset < GRID_SAMPLE_OPSET:
        raise _refuse(ctx, f"remap/warp_perspective become GridSample, which needs opset "
                      f"{GRID_SAMPLE_OPSET}", f"export with --opset {GRID_SAMPLE_OPSET} or more")
    border, interp = str(border).lower(), str(interp).lower()
    if border not in BORDER_MODES:
        raise _refuse(ctx, f"border mode {border!r} has no GridSample padding mode",
                      f"use one of {sorted(BORDER_MODES)}")
    if interp not in INTERP_MODES:
        raise _refuse(ctx, f"interp mode {interp!r} has no GridSample mode",
                      f"use one of {sorted(INTERP_MODES)}")
    mode = INTERP_MODES[interp]
    if mode == "bilinear" and ctx.opset >= LINEAR_RENAMED_OPSET:
        mode = "linear"
    return {"mode": mode, "padding_mode": BORDER_MODES[border], "align_corners": 0}


def emit_grid_sample(ctx: ExportContext, expr: Any, x: Any, x_node: Any, pixels: Any,
                     border: str, scalar: float, interp: str) -> None:
    """Sample `x` (N, C, H, W) at pixel coordinates `pixels` (N, Ho, Wo, 2) as (x, y), pixel
    centres at integers: GridSample's normalized grid with align_corners=0 is (2p + 1)/size - 1."""
    attrs = _grid_sample_attrs(ctx, border, interp)
    if attrs["mode"] == "nearest":  # round in pixels (half to even, as MegEngine does): the
        pixels = ctx.op("Round", [pixels])  # normalized grid would blur exact half pixels
    height, width = (int(d) for d in x_node.shape[2:4])
    scale = ctx.const(np.asarray([2.0 / width, 2.0 / height], np.float32))
    shift = ctx.const(np.asarray([1.0 / width - 1.0, 1.0 / height - 1.0], np.float32))
    grid = ctx.op("Add", [ctx.op("Mul", [pixels, scale]), shift])
    if attrs["padding_mode"] != "zeros" or float(scalar) == 0.0:
        ctx.emit("GridSample", [x, grid], expr.outputs, **attrs)
        return
    # constant border s: sample x - s with zeros outside, add s back (weights sum to one)
    value = ctx.const(np.asarray(scalar, np.float32))
    sampled = ctx.op("GridSample", [ctx.op("Sub", [x, value]), grid], **attrs)
    ctx.emit("Add", [sampled, value], expr.outputs)


def _as_float32(ctx: ExportContext, node: Any) -> Any:
    return cast_if_needed(ctx, ctx.value_of(node), np.dtype(node.dtype), np.float32)


@function_converter(F.vision.remap)
def remap(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    x = args["inp"]
    emit_grid_sample(ctx, expr, _as_float32(ctx, x), x, _as_float32(ctx, args["map_xy"]),
                     args["border_mode"], args["scalar"], args["interp_mode"])


@apply_converter(builtin.Remap)
def remap_opdef(ctx: ExportContext, expr: Any) -> None:
    op, (x, map_xy) = expr.opdef, expr.inputs[:2]
    _check_nchw(ctx, enum_name(op.format))
    emit_grid_sample(ctx, expr, _as_float32(ctx, x), x, _as_float32(ctx, map_xy),
                     enum_name(op.border_type), op.scalar, enum_name(op.imode))


def _check_nchw(ctx: ExportContext, layout: str) -> None:
    if layout.upper() != "NCHW":
        raise _refuse(ctx, f"format {layout!r}: GridSample samples NCHW images",
                      "use format='NCHW'")


def _static_pair(ctx: ExportContext, value: Any) -> list[int]:
    if hasattr(value, "expr"):
        if not ctx.is_known(value):
            raise _refuse(ctx, "warp_perspective out_shape computed at run time",
                          "give a constant (h, w)")
        value = ctx.known(value)
    values = [int(v) for v in np.asarray(value).reshape(-1)]
    return values * 2 if len(values) == 1 else values


def _warp_perspective(ctx: ExportContext, expr: Any, x_node: Any, mat: Any, out_shape: Any,
                      mat_idx: Any, border: str, value: float, interp: str) -> None:
    """Source pixel of output (w, h) is (M·[w, h, 1]) with x, y divided by the third row:
    one MatMul with a constant pixel grid, then GridSample as for remap."""
    out_h, out_w = _static_pair(ctx, out_shape)
    rows, cols = np.meshgrid(np.arange(out_h), np.arange(out_w), indexing="ij")
    base = np.stack([cols.ravel(), rows.ravel(), np.ones(out_h * out_w)]).astype(np.float32)
    points = ctx.op("MatMul", [_as_float32(ctx, mat), ctx.const(base)])
    xy = ctx.op("Slice", [points, ctx.shape_const([0]), ctx.shape_const([2]),
                          ctx.shape_const([1])])
    z = ctx.op("Slice", [points, ctx.shape_const([2]), ctx.shape_const([3]),
                         ctx.shape_const([1])])
    source = ctx.op("Transpose", [ctx.op("Div", [xy, z])], perm=[0, 2, 1])
    pixels = ctx.op("Reshape", [source, ctx.shape_const([-1, out_h, out_w, 2])])
    x = _as_float32(ctx, x_node)
    if mat_idx is not None:
        index = ctx.op("Cast", [ctx.arg(mat_idx)], to=onnx_dtype(np.int64))
        x = ctx.op("Gather", [x, index], axis=0)
    emit_grid_sample(ctx, expr, x, x_node, pixels, border, value, interp)


@function_converter(F.vision.warp_perspective)
def warp_perspective(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _check_nchw(ctx, str(args["format"]))
    _warp_perspective(ctx, expr, args["inp"], args["mat"], args["out_shape"], args["mat_idx"],
                      args["border_mode"], args["border_val"], args["interp_mode"])


@apply_converter(builtin.WarpPerspective)
def warp_perspective_opdef(ctx: ExportContext, expr: Any) -> None:
    """Inputs (inp, mat, out_shape) or (inp, mat, mat_idx, out_shape)."""
    op, inputs = expr.opdef, expr.inputs
    _check_nchw(ctx, enum_name(op.format))
    mat_idx = inputs[2] if len(inputs) == 4 else None
    _warp_perspective(ctx, expr, inputs[0], inputs[1], inputs[-1], mat_idx,
                      enum_name(op.bmode), op.border_val, enum_name(op.imode))


# ---- correlation (FlowNet cost volume) -------------------------------------------------------
@dataclass(frozen=True)
class CorrelationSpec:
    kernel: int
    max_displacement: int
    stride1: int
    stride2: int
    pad: int
    multiply: bool


def _crop(ctx: ExportContext, x: Any, top: int, left: int, height: int, width: int) -> Any:
    return ctx.op("Slice", [x, ctx.shape_const([top, left]),
                            ctx.shape_const([top + height, left + width]),
                            ctx.shape_const([2, 3])])


def _correlation(ctx: ExportContext, expr: Any, first: Any, second: Any,
                 spec: CorrelationSpec) -> None:
    """One channel per displacement (dy major, dx minor): the channel mean of a1·a2 (or
    |a1 - a2|) summed over a kernel window (an AveragePool), on inputs padded by `pad`."""
    if spec.kernel % 2 == 0 or spec.stride2 < 1 or spec.stride1 < 1:
        raise _refuse(ctx, f"correlation kernel_size={spec.kernel}, strides "
                      f"{spec.stride1}/{spec.stride2}", "use an odd kernel and positive strides")
    _, channels, out_h, out_w = (int(d) for d in expr.outputs[0].shape)
    span_h, span_w = (out_h - 1) * spec.stride1 + spec.kernel, (out_w - 1) * spec.stride1 + spec.kernel
    pads = ctx.shape_const([0, 0, spec.pad, spec.pad, 0, 0, spec.pad, spec.pad])
    a, b = (ctx.op("Pad", [_as_float32(ctx, node), pads], mode="constant")
            for node in (first, second))
    d, radius = spec.max_displacement, spec.max_displacement // spec.stride2
    anchor = _crop(ctx, a, d, d, span_h, span_w)
    size = ctx.const(np.asarray(float(first.shape[1]), np.float32))
    planes = []
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            moved = _crop(ctx, b, d + dy * spec.stride2, d + dx * spec.stride2, span_h, span_w)
            pair_op = ctx.op("Mul" if spec.multiply else "Sub", [anchor, moved])
            value = pair_op if spec.multiply else ctx.op("Abs", [pair_op])
            total = ctx.op("ReduceSum", [value, ctx.shape_const([1])], keepdims=1)
            planes.append(ctx.op("AveragePool", [total], kernel_shape=[spec.kernel] * 2,
                                 strides=[spec.stride1] * 2))
    if len(planes) != channels:
        raise _refuse(ctx, f"correlation gives {len(planes)} channels, MegEngine {channels}",
                      "please report this with the model")
    ctx.emit("Div", [ctx.op("Concat", planes, axis=1), size], expr.outputs)


@function_converter(F.vision.correlation)
def correlation(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    spec = CorrelationSpec(int(args["kernel_size"]), int(args["max_displacement"]),
                           int(args["stride1"]), int(args["stride2"]), int(args["pad_size"]),
                           bool(args["is_multiply"]))
    _correlation(ctx, expr, args["data1"], args["data2"], spec)


@apply_converter(builtin.Correlation)
def correlation_opdef(ctx: ExportContext, expr: Any) -> None:
    op = expr.opdef
    _check_nchw(ctx, enum_name(op.format))
    spec = CorrelationSpec(op.kernel_size, op.max_displacement, op.stride1, op.stride2,
                           op.pad_size, bool(op.is_multiply))
    _correlation(ctx, expr, expr.inputs[0], expr.inputs[1], spec)
