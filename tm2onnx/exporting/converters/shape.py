"""Layout converters: reshape/flatten/transpose, expand_dims/squeeze, concat/stack/split,
broadcast_to/repeat/tile and pixel shuffle. Shapes are built so a dynamic batch keeps working:
Reshape copies leading dims with 0, Tile needs no input shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import megengine.functional as F
import megengine.module as M
import numpy as np

from ...errors import ConversionError
from ..context import ExportContext
from . import function_converter, method_converter, module_converter
from ._util import as_list, call_args, cast_if_needed, int64_vector, normalize_axis, tensor_dtype

# importing indexing also registers its GetVarShape, __getitem__ and __setitem__ converters
from .indexing import chain, is_node


def _ints(ctx: ExportContext, values: Any) -> list[int]:
    """Python ints from ints and export-time-known TensorNodes (runtime ones refused)."""
    result = []
    for value in as_list(values):
        if is_node(value):
            if not ctx.is_known(value):
                raise ConversionError(f"{ctx.base_name}: {value} must be known at export time",
                                      where=ctx.source, hint="use constant axes/repeats")
            result.extend(int(v) for v in ctx.known(value).reshape(-1))
        else:
            result.append(int(value))
    return result


def _shape_pieces(target: Any) -> list:
    """`reshape(2, -1)`, `reshape((2, -1))` and `reshape(y.shape)` all as a list of pieces."""
    if isinstance(target, tuple) and len(target) == 1 and (
            isinstance(target[0], (Sequence, np.ndarray)) or is_node(target[0])):
        target = target[0]
    if is_node(target) or not isinstance(target, Sequence):
        return [target]
    return list(target)


def _emit_reshape(ctx: ExportContext, expr: Any, x: Any, target: Any) -> None:
    shape = int64_vector(ctx, _shape_pieces(target))
    ctx.emit("Reshape", [ctx.value_of(x), shape], expr.outputs)


@method_converter("reshape")
def reshape_method(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _emit_reshape(ctx, expr, args["self"], tuple(args["args"]))


@function_converter(F.reshape)
def reshape_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _emit_reshape(ctx, expr, args["inp"], args["target_shape"])


@function_converter(F.flatten)
@method_converter("flatten")
def flatten(ctx: ExportContext, expr: Any) -> None:
    """Reshape to [0]*start + [-1] + the dims after end_axis (never axis 0, so batch-safe)."""
    args = call_args(expr)
    x = args.get("inp", args.get("self"))
    rank = len(x.shape)
    start = normalize_axis(int(args["start_axis"]), rank)
    end = normalize_axis(int(args["end_axis"]), rank)
    target = [0] * start + [-1] + [int(d) for d in x.shape[end + 1:]]
    ctx.emit("Reshape", [ctx.value_of(x), ctx.shape_const(target)], expr.outputs)


def _transpose_steps(ctx: ExportContext, pattern: list, rank: int) -> list[tuple]:
    """MegEngine patterns may add axes ('x') and drop size-1 axes by leaving them out."""
    kept = [int(p) for p in pattern if p != "x"]
    dropped = sorted(set(range(rank)) - set(kept))
    steps: list[tuple] = []
    if dropped:
        steps.append(("Squeeze", [ctx.shape_const(dropped)], {}))
        kept = [p - sum(d < p for d in dropped) for p in kept]
    if kept != sorted(kept):
        steps.append(("Transpose", [], {"perm": kept}))
    new_axes = [i for i, p in enumerate(pattern) if p == "x"]
    if new_axes:
        steps.append(("Unsqueeze", [ctx.shape_const(new_axes)], {}))
    return steps


def emit_transpose(ctx: ExportContext, expr: Any, x: Any, pattern: Any) -> None:
    rank = len(x.shape)
    pattern = list(reversed(range(rank))) if pattern is None else list(pattern)
    chain(ctx, expr, ctx.value_of(x), _transpose_steps(ctx, pattern, rank))


@method_converter("transpose")
def transpose_method(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    pattern = tuple(args["args"])
    if len(pattern) == 1 and isinstance(pattern[0], Sequence):
        pattern = pattern[0]
    emit_transpose(ctx, expr, args["self"], pattern or None)


@function_converter(F.transpose)
def transpose_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_transpose(ctx, expr, args["inp"], args["pattern"])


@function_converter(F.swapaxes)
def swapaxes(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    x = args["inp"]
    pattern = list(range(len(x.shape)))
    a, b = int(args["axis1"]), int(args["axis2"])
    pattern[a], pattern[b] = pattern[b], pattern[a]
    emit_transpose(ctx, expr, x, pattern)


@function_converter(F.expand_dims)
def expand_dims(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    axes = ctx.shape_const(_ints(ctx, args["axis"]))
    ctx.emit("Unsqueeze", [ctx.value_of(args["inp"]), axes], expr.outputs)


@function_converter(F.squeeze)
def squeeze(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    x = args["inp"]
    # axis=None squeezes the axes that were 1 when traced (with a dynamic batch, trace with
    # batch > 1, or the batch axis is squeezed too)
    if args["axis"] is not None:
        axes = _ints(ctx, args["axis"])
    else:
        axes = [i for i, dim in enumerate(x.shape) if dim == 1]
    steps = [("Squeeze", [ctx.shape_const(axes)], {})] if axes else []
    chain(ctx, expr, ctx.value_of(x), steps)


def _same_dtype(ctx: ExportContext, nodes: list, expr: Any) -> list:
    want = expr.outputs[0].dtype
    return [cast_if_needed(ctx, ctx.value_of(n), tensor_dtype(n), want) for n in nodes]


def emit_concat(ctx: ExportContext, expr: Any, nodes: list, axis: int) -> None:
    """MegEngine concatenates a 0-d tensor as shape (1,) (`F.concat([scale_w, scale_h])`);
    ONNX Concat needs rank >= 1, so those are reshaped first."""
    inputs = [ctx.op("Reshape", [tensor, ctx.shape_const([1])]) if len(node.shape) == 0
              else tensor for node, tensor in zip(nodes, _same_dtype(ctx, nodes, expr))]
    if len(inputs) == 1:
        ctx.emit("Identity", inputs, expr.outputs)
        return
    axis = normalize_axis(int(axis), len(expr.outputs[0].shape))
    ctx.emit("Concat", inputs, expr.outputs, axis=axis)


@function_converter(F.concat)
def concat(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_concat(ctx, expr, list(args["inps"]), args["axis"])


@function_converter(F.stack)
def stack(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_stack(ctx, expr, list(args["inps"]), int(args["axis"]))


def emit_stack(ctx: ExportContext, expr: Any, nodes: list, axis: int) -> None:
    inputs = _same_dtype(ctx, nodes, expr)
    if len(inputs) == 1:
        ctx.emit("Unsqueeze", [inputs[0], ctx.shape_const([axis])], expr.outputs)
        return
    # MegEngine's Stack opr reads a 0-d input as shape (1,): two scalars stack to (2, 1).
    inputs = [ctx.op("Reshape", [t, ctx.shape_const([1])]) if tuple(node.shape) == () else t
              for t, node in zip(inputs, nodes)]
    expanded = [ctx.op("Unsqueeze", [t, ctx.shape_const([axis])]) for t in inputs]
    ctx.emit("Concat", expanded, expr.outputs, axis=axis)


@function_converter(F.split)
def split(ctx: ExportContext, expr: Any) -> None:
    """Sizes come from the outputs: MegEngine's even split (10 -> 4, 3, 3) is not ONNX's."""
    args = call_args(expr)
    x = args["inp"]
    axis = normalize_axis(int(args["axis"]), len(x.shape))
    sections = args["nsplits_or_sections"]
    if not ctx.is_batch_axis(x, axis):  # q/k/v split after moving the batch to axis 1
        sizes = [int(out.shape[axis]) for out in expr.outputs]
        ctx.emit("Split", [ctx.value_of(x), ctx.shape_const(sizes)], expr.outputs, axis=axis)
        return
    if not isinstance(sections, Sequence):
        raise ConversionError(f"{ctx.base_name}: splitting the dynamic batch axis into "
                              f"{sections} parts", where=ctx.source,
                              hint="give split indices, or export without dynamic_batch")
    bounds = [0, *_ints(ctx, sections), 2**63 - 1]
    for out, start, stop in zip(expr.outputs, bounds, bounds[1:]):
        ctx.emit("Slice", [ctx.value_of(x), ctx.shape_const([start]), ctx.shape_const([stop]),
                           ctx.shape_const([axis])], [out])


def _emit_broadcast(ctx: ExportContext, expr: Any, x: Any, shape: Any) -> None:
    # None means "keep this axis": Expand broadcasts both ways, so 1 keeps the input's size
    pieces = [1 if piece is None else piece for piece in _shape_pieces(shape)]
    ctx.emit("Expand", [ctx.value_of(x), int64_vector(ctx, pieces)], expr.outputs)


@function_converter(F.broadcast_to)
def broadcast_to(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _emit_broadcast(ctx, expr, args["inp"], args["shape"])


@method_converter("_broadcast")
def broadcast_method(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _emit_broadcast(ctx, expr, args["self"], tuple(args["args"]))


@function_converter(F.repeat)
def repeat(ctx: ExportContext, expr: Any) -> None:
    """Each element `repeats` times along `axis`, at rank <= 4 with the batch kept: the axes
    from 1 to `axis` merged into one and those after it into another, (n, m, 1, t), Tiled
    along the size-1 axis, then reshaped back (an Unsqueeze + Tile at rank + 1 would make
    the 2x nearest upsampling of a 4-D NCHW map 5-D, which ncnn/pnnx cannot run)."""
    args = call_args(expr)
    x, repeats, axis = args["inp"], _ints(ctx, args["repeats"])[0], args["axis"]
    tensor, dims = ctx.value_of(x), [int(d) for d in x.shape]
    if axis is None:
        tensor, axis, dims = ctx.op("Reshape", [tensor, ctx.shape_const([-1])]), 0, [-1]
    axis = normalize_axis(int(axis), len(dims))
    tail = int(np.prod(dims[axis + 1:], dtype=np.int64))
    if axis == 0:  # Reshape's 0 copies the (maybe dynamic) leading size
        grouped, reps, out = [0, 1, tail], [1, repeats, 1], [-1] + dims[1:]
    else:
        middle = int(np.prod(dims[1:axis + 1], dtype=np.int64))
        grouped, reps = [0, middle, 1, tail], [1, 1, repeats, 1]
        out = [0] + dims[1:axis] + [dims[axis] * repeats] + dims[axis + 1:]
    chain(ctx, expr, tensor, [("Reshape", [ctx.shape_const(grouped)], {}),
                              ("Tile", [ctx.shape_const(reps)], {}),
                              ("Reshape", [ctx.shape_const(out)], {})])


@function_converter(F.tile)
def tile(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    x, reps = args["inp"], _shape_pieces(args["reps"])
    extra = len(reps) - len(x.shape)
    steps = [("Unsqueeze", [ctx.shape_const(range(extra))], {})] if extra > 0 else []
    steps.append(("Tile", [int64_vector(ctx, reps)], {}))
    chain(ctx, expr, ctx.value_of(x), steps)


def _emit_pixel_shuffle(ctx: ExportContext, expr: Any, x: Any, factor: int) -> None:
    """ONNX DepthToSpace in CRD order is MegEngine's (n, c, r, r, h, w) -> (n, c, h, r, w, r)."""
    rank, tensor = len(x.shape), ctx.value_of(x)
    d2s = ("DepthToSpace", [], {"blocksize": int(factor), "mode": "CRD"})
    if rank == 4:
        return chain(ctx, expr, tensor, [d2s])
    if rank == 3:
        zero = ctx.shape_const([0])
        return chain(ctx, expr, tensor, [("Unsqueeze", [zero], {}), d2s, ("Squeeze", [zero], {})])
    channels, height, width = (int(d) for d in x.shape[-3:])
    merged = ctx.op("Reshape", [tensor, ctx.shape_const([-1, channels, height, width])])
    out_shape = [int(d) for d in expr.outputs[0].shape]
    target = ctx.shape_const(out_shape)
    if ctx.dynamic_batch:  # the leading dims come back from the input's run-time shape
        leading = ctx.op("Slice", [ctx.op("Shape", [tensor]), ctx.shape_const([0]),
                                   ctx.shape_const([rank - 3])])
        target = ctx.op("Concat", [leading, ctx.shape_const(out_shape[-3:])], axis=0)
    return chain(ctx, expr, merged, [d2s, ("Reshape", [target], {})])


@function_converter(F.nn.pixel_shuffle)
def pixel_shuffle_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _emit_pixel_shuffle(ctx, expr, args["inp"], _ints(ctx, args["upscale_factor"])[0])


@module_converter(M.PixelShuffle)
def pixel_shuffle_module(ctx: ExportContext, expr: Any, module: Any) -> None:
    _emit_pixel_shuffle(ctx, expr, expr.inputs[1], module.upscale_factor)
