"""`x.shape` (the GetVarShape apply) and `x[index]`: indexing is one Slice, a rank-keeping
Gather per integer or array index, one Squeeze of the integer axes and one Unsqueeze for the
`None`s; several array indices are one GatherND (_advanced_index); `x[index] = v` is in
setitem.py."""

from __future__ import annotations

from typing import Any

import numpy as np
from megengine.core.ops.builtin import GetVarShape

from ...errors import ConversionError
from ..context import ExportContext
from . import apply_converter, method_converter
from ._util import call_args, int64_vector, onnx_dtype

INT64_MAX = int(np.iinfo(np.int64).max)
INT64_MIN = int(np.iinfo(np.int64).min)
NO_AXIS = GetVarShape().axis  # MegEngine's "whole shape" marker (MAX_NDIM)


def is_node(value: Any) -> bool:
    return hasattr(value, "expr") and hasattr(value, "users")


def chain(ctx: ExportContext, expr: Any, x: Any, steps: list[tuple]) -> None:
    """Apply (op, extra_inputs, attrs) steps to `x`; the last one produces the expr's output."""
    if not steps:
        steps = [("Identity", [], {})]
    for op, extra, attrs in steps[:-1]:
        x = ctx.op(op, [x, *extra], **attrs)
    op, extra, attrs = steps[-1]
    ctx.emit(op, [x, *extra], expr.outputs, **attrs)


@apply_converter(GetVarShape)
def get_var_shape(ctx: ExportContext, expr: Any) -> None:
    """Static shapes become known values the walker folds (`x.shape[1] // 2` is a constant);
    with a dynamic batch the shape is read at run time."""
    node, output = expr.inputs[0], expr.outputs[0]
    axis = expr.opdef.axis
    if not ctx.dynamic_batch and not ctx.has_runtime_shape(node):
        shape = np.asarray(node.shape, dtype=np.int32)
        ctx.set_known(output, shape if axis == NO_AXIS else shape[[axis]])
        return
    steps = [("Cast", [], {"to": onnx_dtype(output.dtype)})]
    if axis != NO_AXIS:
        steps.insert(0, ("Gather", [ctx.shape_const([axis])], {"axis": 0}))
    shape = ctx.op("Shape", [ctx.value_of(node)])
    chain(ctx, expr, shape, steps)


def expand_index(ctx: ExportContext, index: Any, rank: int) -> list:
    """The index as one item per input axis (plus `None`s), with `...` spelled out."""
    items = list(index) if isinstance(index, tuple) else [index]
    ellipses = [i for i, item in enumerate(items) if item is Ellipsis]
    used = sum(1 for item in items if item is not None and item is not Ellipsis)
    if len(ellipses) > 1 or used > rank:
        raise ConversionError(f"{ctx.base_name}: index {index!r} does not fit a rank-{rank} "
                              "tensor", where=ctx.source, hint="check the indexing expression")
    fill = [slice(None)] * (rank - used)
    if ellipses:
        return items[:ellipses[0]] + fill + items[ellipses[0] + 1:]
    return items + fill


def is_full(item: Any) -> bool:
    """`:` — compared by identity, since slice equality would compare TensorNodes."""
    return isinstance(item, slice) and all(part is None for part in
                                           (item.start, item.stop, item.step))


def _kind(ctx: ExportContext, item: Any) -> str:
    if item is None:
        return "new"
    if isinstance(item, slice):
        return "slice"
    if is_node(item):
        if np.dtype(item.dtype) == np.bool_:
            return "mask"
        return "int" if len(item.shape or ()) == 0 else "array"
    return "int" if np.ndim(item) == 0 else "array"


def _slice_parts(ctx: ExportContext, item: slice) -> tuple[Any, Any, int]:
    step = item.step
    if is_node(step):
        if not ctx.is_known(step):
            raise ConversionError(f"{ctx.base_name}: a slice step computed at run time",
                                  where=ctx.source, hint="use a constant step")
        step = ctx.known(step).item()
    step = 1 if step is None else int(step)
    if step == 0:
        raise ConversionError(f"{ctx.base_name}: slice step 0", where=ctx.source,
                              hint="use a non-zero step")
    start = item.start if item.start is not None else (0 if step > 0 else INT64_MAX)
    stop = item.stop if item.stop is not None else (INT64_MAX if step > 0 else INT64_MIN)
    return start, stop, step


def _gather_index(ctx: ExportContext, item: Any, kind: str) -> Any:
    """Integers become 1-D indices, so the axis stays (they are squeezed together later)."""
    if not is_node(item) or ctx.is_known(item):
        value = np.asarray(ctx.known(item) if is_node(item) else item, dtype=np.int64)
        return ctx.const(value.reshape(-1) if kind == "int" else value)
    if kind == "int":
        return ctx.op("Reshape", [ctx.value_of(item), ctx.shape_const([-1])])
    return ctx.value_of(item)


def _index_rank(item: Any) -> int:
    return len(item.shape or ()) if is_node(item) else np.ndim(item)


def _index_plan(ctx: ExportContext, items: list) -> tuple[list, list, list]:
    """(slices as (axis, start, stop, step), gathers as (axis, index, kind), new axes)."""
    slices, gathers, new_axes = [], [], []
    axis = out = 0
    for item in items:
        kind = _kind(ctx, item)
        if kind == "new":
            new_axes.append(out)
            out += 1
            continue
        if kind == "slice" and not is_full(item):
            slices.append((axis, *_slice_parts(ctx, item)))
        elif kind in ("int", "array"):
            gathers.append((axis, item, kind))
        out += _index_rank(item) if kind == "array" else kind == "slice"
        axis += 1
    return slices, gathers, new_axes


def _several_advanced(ctx: ExportContext, items: list) -> bool:
    """An array index with another array or integer index: numpy's advanced indexing."""
    kinds = [_kind(ctx, item) for item in items]
    return "array" in kinds and kinds.count("array") + kinds.count("int") > 1


@method_converter("__getitem__")
def getitem(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    x = args["self"]
    items = expand_index(ctx, args["index"], len(x.shape))
    if any(is_node(item) and _kind(ctx, item) == "mask" for item in items):
        return _mask_index(ctx, expr, x, items)
    if _several_advanced(ctx, items):
        from ._advanced_index import advanced_index
        return advanced_index(ctx, expr, x, items)
    slices, gathers, new_axes = _index_plan(ctx, items)
    steps: list[tuple] = []
    if slices:
        axes, starts, stops, strides = zip(*slices)
        steps.append(("Slice", [int64_vector(ctx, starts), int64_vector(ctx, stops),
                                ctx.shape_const(axes), ctx.shape_const(strides)], {}))
    for axis, item, kind in gathers:
        steps.append(("Gather", [_gather_index(ctx, item, kind)], {"axis": axis}))
    squeezed = [axis for axis, _, kind in gathers if kind == "int"]
    if squeezed:
        steps.append(("Squeeze", [ctx.shape_const(squeezed)], {}))
    if new_axes:
        steps.append(("Unsqueeze", [ctx.shape_const(new_axes)], {}))
    chain(ctx, expr, ctx.value_of(x), steps)


def _mask_index(ctx: ExportContext, expr: Any, x: Any, items: list) -> None:
    """`x[mask]` (and `x[:, mask]`): a k-d bool mask over axes p..p+k-1, every other axis
    whole, as numpy does it: those axes flattened into one, then Compress along it. The
    selected count is a symbolic dim."""
    from .detection import data_dependent

    masks = [p for p, item in enumerate(items) if item is not None and not is_full(item)]
    position = masks[0]
    mask = items[position]
    rank = len(mask.shape)
    if (len(masks) > 1 or any(item is None for item in items)
            or tuple(mask.shape) != tuple(x.shape[position:position + rank])):
        raise ConversionError(f"{ctx.base_name}: boolean mask index mixed with other indices, "
                              f"or a mask of shape {mask.shape} on shape {x.shape}",
                              where=ctx.source, hint="index with the mask alone (x[mask], "
                              "x[:, mask]) or use F.cond_take")
    tail = [int(d) for d in x.shape[position + rank:]]
    flat = ctx.op("Reshape", [ctx.value_of(x), ctx.shape_const([0] * position + [-1] + tail)])
    flat_mask = ctx.op("Reshape", [ctx.value_of(mask), ctx.shape_const([-1])])
    variables = ctx.emit("Compress", [flat, flat_mask], expr.outputs, axis=position)
    data_dependent(ctx, variables, expr.outputs, axis=position)
