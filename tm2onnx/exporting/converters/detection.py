"""Detector post-processing: F.argsort/F.sort (TopK), F.cond_take (NonZero+Gather) and
F.vision.nms (NonMaxSuppression), whose outputs have data-dependent sizes declared as symbolic
dims; F.vision.roi_align (RoiAlign) and F.vision.roi_pooling (MaxRoiPool)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import megengine.functional as F
import numpy as np
import onnx_graphsurgeon as gs
from megengine.core.ops import builtin

from ...errors import ConversionError
from ..context import ExportContext
from . import apply_converter, function_converter, method_converter
from ._util import call_args, cast_if_needed, onnx_dtype, out_dtype, pair, tensor_dtype

HALF_PIXEL_OPSET = 16  # RoiAlign's coordinate_transformation_mode arrived in opset 16


def data_dependent(ctx: ExportContext, variables: Sequence[Any], nodes: Sequence[Any],
                   axis: int = 0) -> None:
    """Declare `axis` of each output as one symbolic dim (`<first output>_n`): its size is
    known only at run time. Other dims keep the traced size (unknown with a dynamic batch)."""
    dim = f"{nodes[0].name}_n"
    for variable, node in zip(variables, nodes):
        shape = [None if ctx.dynamic_batch else int(d) for d in node.shape]
        shape[axis] = dim
        variable.shape = shape


def axis_size(ctx: ExportContext, node: Any, axis: int) -> Any:
    """A 1-element int64 tensor holding `node.shape[axis]`: a constant when the traced size
    holds at run time, else read with Shape."""
    if not ctx.has_runtime_shape(node) and not ctx.dynamic_batch:
        return ctx.shape_const([int(node.shape[axis])])
    shape = ctx.op("Shape", [ctx.value_of(node)])
    return ctx.op("Gather", [shape, ctx.shape_const([axis])], axis=0)


def enum_name(value: Any) -> str:
    """`Remap.BorderMode.REFLECT_101` -> `reflect_101`: OpDef enums as the functions spell them."""
    return str(value).rsplit(".", 1)[-1].lower()


def _refuse(ctx: ExportContext, what: str, hint: str) -> ConversionError:
    return ConversionError(f"{ctx.base_name}: {what}", where=ctx.source, hint=hint)


# ---- sorting -------------------------------------------------------------------------------
def _sorted(ctx: ExportContext, x: Any, descending: bool) -> list[Any]:
    """(values, int64 indices) of a full sort along the last axis. TopK puts the lower index
    first among equal values; MegEngine's order among ties is not specified."""
    k = axis_size(ctx, x, -1)
    return ctx.op("TopK", [ctx.value_of(x), k], outputs=2, axis=-1, largest=int(descending),
                  sorted=1)


@function_converter(F.argsort)
def argsort(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _, indices = _sorted(ctx, args["inp"], bool(args["descending"]))
    ctx.emit("Cast", [indices], expr.outputs, to=onnx_dtype(out_dtype(expr)))


def _emit_sort(ctx: ExportContext, expr: Any, x: Any, descending: bool) -> None:
    """(values, int32 indices), as F.sort and apply(Argsort) return them."""
    values, indices = _sorted(ctx, x, descending)
    ctx.emit("Identity", [values], expr.outputs[:1])
    ctx.emit("Cast", [indices], expr.outputs[1:], to=onnx_dtype(out_dtype(expr, 1)))


@function_converter(F.sort)
def sort(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _emit_sort(ctx, expr, args["inp"], bool(args["descending"]))


@apply_converter(builtin.Argsort)
def argsort_opdef(ctx: ExportContext, expr: Any) -> None:
    """Raw `apply(Argsort)` (functions imported by name)."""
    _emit_sort(ctx, expr, expr.inputs[0], expr.opdef.order == builtin.Argsort.Order.DESCENDING)


# ---- selection with data-dependent sizes ----------------------------------------------------
def flat_nonzero(ctx: ExportContext, mask: Any) -> Any:
    """int64 positions (1-D) of the True elements of a bool tensor, in row-major order."""
    flat = ctx.op("Reshape", [mask, ctx.shape_const([-1])])
    return ctx.op("Reshape", [ctx.op("NonZero", [flat]), ctx.shape_const([-1])])


def _cond_take(ctx: ExportContext, expr: Any, mask: Any, x: Any) -> None:
    if np.dtype(mask.dtype) != np.bool_ or tuple(mask.shape) != tuple(x.shape):
        raise _refuse(ctx, f"cond_take with a {mask.dtype} mask of shape {mask.shape} on "
                      f"shape {x.shape}", "give a bool mask of the value's own shape")
    positions = flat_nonzero(ctx, ctx.value_of(mask))
    flat_x = ctx.op("Reshape", [ctx.value_of(x), ctx.shape_const([-1])])
    values = ctx.emit("Gather", [flat_x, positions], expr.outputs[:1], axis=0)
    index = ctx.emit("Cast", [positions], expr.outputs[1:], to=onnx_dtype(out_dtype(expr, 1)))
    data_dependent(ctx, values + index, expr.outputs)


@function_converter(F.cond_take)
def cond_take(ctx: ExportContext, expr: Any) -> None:
    """(x[mask] flattened, int32 flat indices): NonZero of the flat mask, then Gather."""
    args = call_args(expr)
    _cond_take(ctx, expr, args["mask"], args["x"])


@apply_converter(builtin.CondTake)
def cond_take_opdef(ctx: ExportContext, expr: Any) -> None:
    x, mask = expr.inputs[:2]
    _cond_take(ctx, expr, mask, x)


@method_converter("detach")
def detach(ctx: ExportContext, expr: Any) -> None:
    """Stops gradients only (F.vision.nms detaches its inputs): an Identity."""
    ctx.emit("Identity", [ctx.value_of(expr.inputs[0])], expr.outputs)


@function_converter(F.vision.nms)
def nms(ctx: ExportContext, expr: Any) -> None:
    """NonMaxSuppression on one batch and class; the kept box column, as int32, in MegEngine's
    order (descending score). MegEngine keeps all boxes when `max_output` is None."""
    args = call_args(expr)
    boxes, max_output = args["boxes"], args["max_output"]
    keep = (ctx.shape_const([int(max_output)]) if max_output is not None
            else axis_size(ctx, boxes, 0))
    boxes3 = ctx.op("Unsqueeze", [_float32(ctx, boxes), ctx.shape_const([0])])
    scores3 = ctx.op("Reshape", [_float32(ctx, args["scores"]), ctx.shape_const([1, 1, -1])])
    kept = _nms_kept(ctx, boxes3, scores3, keep, args["iou_thresh"])
    variables = ctx.emit("Cast", [kept], expr.outputs, to=onnx_dtype(out_dtype(expr)))
    data_dependent(ctx, variables, expr.outputs)


def _nms_kept(ctx: ExportContext, boxes: Any, scores: Any, keep: Any, iou: float) -> Any:
    """int64 indices (1-D) NonMaxSuppression keeps of boxes (1, N, 4) scored (1, 1, N)."""
    threshold = ctx.const(np.asarray([iou], dtype=np.float32))
    selected = ctx.op("NonMaxSuppression", [boxes, scores, keep, threshold])
    column = ctx.op("Gather", [selected, ctx.shape_const([2])], axis=1)
    return ctx.op("Reshape", [column, ctx.shape_const([-1])])


@apply_converter(builtin.NMSKeep)
def nms_keep_opdef(ctx: ExportContext, expr: Any) -> None:
    """Raw NMSKeep on boxes (1, N, 4) already sorted by score (as F.vision.nms sorts them):
    scores are a descending ramp; kept positions are padded to `max_output` by repeating the
    last one, as MegEngine does, and the count is the second output."""
    boxes, op = expr.inputs[0], expr.opdef
    if len(boxes.shape) != 3 or boxes.shape[0] != 1:
        raise _refuse(ctx, f"NMSKeep on boxes of shape {boxes.shape}", "use one batch (1, N, 4)")
    count_all = ctx.op("Cast", [ctx.op("Squeeze", [axis_size(ctx, boxes, 1)])],
                       to=onnx_dtype(np.float32))
    ramp = ctx.op("Range", [count_all, ctx.const(np.asarray(0, np.float32)),
                            ctx.const(np.asarray(-1, np.float32))])
    scores = ctx.op("Reshape", [ramp, ctx.shape_const([1, 1, -1])])
    limit = ctx.shape_const([int(op.max_output)])
    kept = _nms_kept(ctx, _float32(ctx, boxes), scores, limit, op.iou_thresh)
    count = ctx.op("Shape", [kept])
    pads = ctx.op("Concat", [ctx.shape_const([0]), ctx.op("Sub", [limit, count])], axis=0)
    padded = ctx.op("Pad", [kept, pads], mode="edge")
    row = ctx.op("Unsqueeze", [padded, ctx.shape_const([0])])
    ctx.emit("Cast", [row], expr.outputs[:1], to=onnx_dtype(out_dtype(expr)))
    ctx.emit("Cast", [count], expr.outputs[1:], to=onnx_dtype(out_dtype(expr, 1)))


def _float32(ctx: ExportContext, node: Any) -> Any:
    return cast_if_needed(ctx, ctx.value_of(node), tensor_dtype(node), np.float32)


# ---- RoI feature extraction ------------------------------------------------------------------
def _split_rois(ctx: ExportContext, rois: Any) -> tuple[Any, Any]:
    """MegEngine's (K, 5) `(batch_index, x1, y1, x2, y2)` rois as ONNX's boxes and indices."""
    rois = _float32(ctx, rois)
    column = ctx.op("Gather", [rois, ctx.const(np.asarray(0, dtype=np.int64))], axis=1)
    index = ctx.op("Cast", [column], to=onnx_dtype(np.int64))
    boxes = ctx.op("Slice", [rois, ctx.shape_const([1]), ctx.shape_const([5]),
                             ctx.shape_const([1])])
    return boxes, index


@dataclass(frozen=True)
class RoiAlignSpec:
    mode: str
    height: int
    width: int
    sample_h: int
    sample_w: int
    scale: float
    offset: float  # MegEngine subtracts it from scaled RoI corners: 0.5 when aligned


def _roi_align(ctx: ExportContext, expr: Any, x: Any, rois: Any, spec: RoiAlignSpec) -> None:
    """RoiAlign (avg, half_pixel: opset 16) on the input padded by one zero pixel, boxes moved
    to match. MegEngine reads pixels outside the image as zero and never clamps the RoI size
    to 1; onnxruntime clamps samples within a pixel of the border to it. With the padding every
    sample lands where both agree (checked against MegEngine for RoIs far outside the image)."""
    if spec.mode != "average":
        raise _refuse(ctx, f"roi_align mode={spec.mode!r}: onnxruntime's max RoiAlign takes the "
                      "max of weighted corners, not of interpolated samples",
                      "use mode='average'")
    if spec.sample_h != spec.sample_w or spec.sample_h < 1:
        raise _refuse(ctx, f"roi_align sample_points={(spec.sample_h, spec.sample_w)}: ONNX has "
                      "one positive sampling_ratio for both axes (0 means adaptive, not dense)",
                      "use equal positive sample_points")
    if ctx.opset < HALF_PIXEL_OPSET:
        raise _refuse(ctx, "roi_align needs RoiAlign's half_pixel mode (older RoiAlign clamps "
                      f"RoIs to at least one pixel), from opset {HALF_PIXEL_OPSET}",
                      f"export with --opset {HALF_PIXEL_OPSET} or more")
    boxes, index = _split_rois(ctx, rois)
    # half_pixel subtracts 0.5 itself; the padding moves the image by one pixel
    shift = (1.5 - spec.offset) / spec.scale
    boxes = ctx.op("Add", [boxes, ctx.const(np.asarray(shift, np.float32))])
    padded = ctx.op("Pad", [_float32(ctx, x), ctx.shape_const([0, 0, 1, 1, 0, 0, 1, 1])],
                    mode="constant")
    ctx.emit("RoiAlign", [padded, boxes, index], expr.outputs[:1], mode="avg",
             output_height=spec.height, output_width=spec.width, sampling_ratio=spec.sample_h,
             spatial_scale=spec.scale, coordinate_transformation_mode="half_pixel")
    unused_outputs(ctx, expr)


def unused_outputs(ctx: ExportContext, expr: Any, first: int = 1) -> None:
    """Outputs from `first` on (MegEngine's argmax indices for backward) must have no readers."""
    for node in expr.outputs[first:]:
        if node.users:
            raise _refuse(ctx, f"output {node.name} (kept for MegEngine's backward pass) is "
                          "used", "use only the first output")
        ctx.bind(node, gs.Variable(f"{node.name}_unused"))


@function_converter(F.vision.roi_align)
def roi_align(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    spec = RoiAlignSpec(str(args["mode"]).lower(), *pair(args["output_shape"]),
                        *pair(args["sample_points"]), float(args["spatial_scale"]),
                        0.5 if args["aligned"] else 0.0)
    _roi_align(ctx, expr, args["inp"], args["rois"], spec)


@apply_converter(builtin.ROIAlign)
def roi_align_opdef(ctx: ExportContext, expr: Any) -> None:
    op = expr.opdef
    if enum_name(op.format) != "nchw":
        raise _refuse(ctx, f"ROIAlign format {op.format}", "use NCHW")
    spec = RoiAlignSpec(enum_name(op.mode), op.pooled_height, op.pooled_width,
                        op.sample_height, op.sample_width, op.spatial_scale, op.offset)
    _roi_align(ctx, expr, expr.inputs[0], expr.inputs[1], spec)


def _roi_pooling(ctx: ExportContext, expr: Any, x: Any, rois: Any, mode: str,
                 shape: list[int], scale: float) -> None:
    """MaxRoiPool takes MegEngine's (K, 5) rois as they are."""
    if mode != "max":
        raise _refuse(ctx, f"roi_pooling mode={mode!r}: ONNX has only MaxRoiPool",
                      "use mode='max'")
    ctx.emit("MaxRoiPool", [ctx.value_of(x), _float32(ctx, rois)], expr.outputs[:1],
             pooled_shape=shape, spatial_scale=float(scale))
    unused_outputs(ctx, expr)


@function_converter(F.vision.roi_pooling)
def roi_pooling(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _roi_pooling(ctx, expr, args["inp"], args["rois"], str(args["mode"]).lower(),
                 pair(args["output_shape"]), args["scale"])


@apply_converter(builtin.ROIPooling)
def roi_pooling_opdef(ctx: ExportContext, expr: Any) -> None:
    x, rois, shape = expr.inputs[:3]
    if not ctx.is_known(shape):
        raise _refuse(ctx, "ROIPooling output shape computed at run time", "use a constant")
    _roi_pooling(ctx, expr, x, rois, enum_name(expr.opdef.mode),
                 [int(v) for v in ctx.known(shape)], expr.opdef.scale)
