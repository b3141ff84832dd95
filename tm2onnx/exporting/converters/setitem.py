"""`x[index] = v` in ops every toolchain has: a boolean mask tensor is a Where; an index known
at export time writes unit-step slices as Slice + Concat on each written axis, other steps
and index lists as a constant Gather of v plus a Where — never a ScatterND over the flattened
tensor (pnnx/ncnn have none, and it needed one index per written element)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ...errors import ConversionError
from ..context import ExportContext
from . import method_converter
from ._util import call_args, cast_if_needed, tensor_dtype
from .indexing import expand_index, is_full, is_node

Written = tuple[int, np.ndarray, bool]  # (axis, positions written along it, integer index)


@method_converter("__setitem__")
def setitem(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    x, value, index = args["self"], args["value"], args["index"]
    items = list(index) if isinstance(index, tuple) else [index]
    if any(_is_mask(ctx, item) for item in items):
        return _mask_write(ctx, expr, x, items, value)
    return _static_write(ctx, expr, x, _static_index(ctx, index), value)


def _is_mask(ctx: ExportContext, item: Any) -> bool:
    """A boolean TensorNode index: computed at run time, or a known (constant) k-D mask."""
    return is_node(item) and np.dtype(item.dtype) == np.bool_


def _refuse(ctx: ExportContext, what: str, hint: str) -> ConversionError:
    return ConversionError(f"{ctx.base_name}: x[index] = v {what}", where=ctx.source, hint=hint)


def _value(ctx: ExportContext, value: Any, dtype: np.dtype) -> tuple[Any, tuple[int, ...]]:
    """v as an ONNX tensor of x's dtype, and its traced shape."""
    if is_node(value):
        tensor = cast_if_needed(ctx, ctx.value_of(value), tensor_dtype(value), dtype)
        return tensor, tuple(int(d) for d in value.shape)
    array = np.asarray(value, dtype=dtype)
    return ctx.const(array), array.shape


# ---- x[mask] = v, a boolean mask tensor --------------------------------------------------
def _mask_write(ctx: ExportContext, expr: Any, x: Any, items: list, value: Any) -> None:
    """Where(mask over axes p..p+k-1, v, x): v is one value or broadcasts over the axes after
    the mask, so the selected count (known only at run time) never matters."""
    rank, shape = len(x.shape), tuple(int(d) for d in x.shape)
    position = next(p for p, item in enumerate(items) if _is_mask(ctx, item))
    mask = items[position]
    k = len(mask.shape)
    others = items[:position] + items[position + 1:]
    if (any(not (is_full(item) or item is Ellipsis) for item in others)
            or any(item is Ellipsis for item in items[:position])
            or tuple(int(d) for d in mask.shape) != shape[position:position + k]):
        raise _refuse(ctx, f"with a boolean mask of shape {tuple(mask.shape)} among other "
                      f"indices on shape {shape}", "index with the mask alone (x[mask] = v, "
                      "x[:, mask] = v), the mask's shape equal to the axes it covers")
    tail = shape[position + k:]
    tensor, vshape = _value(ctx, value, np.dtype(x.dtype))
    extra = len(vshape) - len(tail)
    if extra > 0 and any(d != 1 for d in vshape[:extra]):
        raise _refuse(ctx, f"with one value per selected element (v of shape {vshape})",
                      "the selected count is known only at run time: assign one value, or "
                      "values that broadcast over the axes after the mask (use F.where)")
    if extra > 0:
        vshape = vshape[extra:]
        tensor = ctx.op("Reshape", [tensor, ctx.shape_const(vshape)])
    if np.broadcast_shapes(vshape, tail) != tail:
        raise _refuse(ctx, f"with v of shape {vshape} for masked elements of shape {tail}",
                      "v must broadcast to the axes after the mask")
    axes = list(range(position)) + list(range(position + k, rank))
    cond = ctx.value_of(mask)
    if axes:
        cond = ctx.op("Unsqueeze", [cond, ctx.shape_const(axes)])
    ctx.emit("Where", [cond, tensor, ctx.value_of(x)], expr.outputs)


# ---- x[index] = v, the index known at export time -----------------------------------------
def _static_index(ctx: ExportContext, index: Any) -> Any:
    """The index with known TensorNodes replaced by their values (runtime ones refused)."""
    def resolve(item: Any) -> Any:
        if isinstance(item, slice):
            return slice(resolve(item.start), resolve(item.stop), resolve(item.step))
        if not is_node(item):
            return item
        if not ctx.is_known(item):
            raise _refuse(ctx, "with an index computed at run time",
                          "use constant indices, or a boolean mask alone (x[mask] = v)")
        value = ctx.known(item)
        return value.item() if value.ndim == 0 else value
    return tuple(resolve(i) for i in index) if isinstance(index, tuple) else resolve(index)


def _written_axes(ctx: ExportContext, items: list, shape: tuple[int, ...]) -> list[Written]:
    written = []
    for axis, item in enumerate(items):
        if item is None:
            raise _refuse(ctx, "with None (a new axis) in the index", "drop the None")
        if is_full(item):
            continue
        positions = np.arange(shape[axis])
        if isinstance(item, slice):
            written.append((axis, positions[item], False))
        elif np.ndim(item) == 0:
            written.append((axis, positions[[int(item)]], True))
        elif np.ndim(item) == 1:
            written.append((axis, positions[np.asarray(item)], False))
        else:
            raise _refuse(ctx, f"with a {np.ndim(item)}-D index array", "index with slices, "
                          "integers or one 1-D array")
    arrays = [axis for axis, item in enumerate(items)
              if not isinstance(item, slice) and item is not None and np.ndim(item) == 1]
    if arrays and len([w for w in written if w[2] or w[0] in arrays]) > 1:
        raise _refuse(ctx, "with an index array beside other integer or array indices",
                      "numpy moves such axes to the front: index one axis with an array")
    return written


def _static_write(ctx: ExportContext, expr: Any, x: Any, index: Any, value: Any) -> None:
    shape = tuple(int(d) for d in x.shape)
    items = expand_index(ctx, index, len(shape))
    written = _written_axes(ctx, items, shape)
    if ctx.dynamic_batch and any(axis == 0 for axis, _, _ in written):
        raise _refuse(ctx, "touching axis 0 with a dynamic batch",
                      "index axis 0 with ':' or export without dynamic_batch")
    if any(positions.size == 0 for _, positions, _ in written):
        ctx.emit("Identity", [ctx.value_of(x)], expr.outputs)  # an empty slice writes nothing
        return None
    region = list(shape)
    for axis, positions, _ in written:
        region[axis] = positions.size
    tensor = _value_at_region_rank(ctx, value, np.dtype(x.dtype), region, written)
    if all(_is_range(positions) for _, positions, _ in written):
        return _concat_write(ctx, expr, x, tensor, written, region)
    return _gather_write(ctx, expr, x, tensor, written, shape)


def _value_at_region_rank(ctx: ExportContext, value: Any, dtype: np.dtype, region: list[int],
                          written: list[Written]) -> Any:
    """v, broadcast as numpy would to x[index] (integer axes dropped), with size-1 axes put back
    where the integers were, so it lines up with the region x[index] covers in x."""
    tensor, vshape = _value(ctx, value, dtype)
    squeezed = [axis for axis, _, integer in written if integer]
    target = tuple(size for axis, size in enumerate(region) if axis not in squeezed)
    extra = len(vshape) - len(target)
    if extra > 0 and all(d == 1 for d in vshape[:extra]):
        vshape = vshape[extra:]
        tensor = ctx.op("Reshape", [tensor, ctx.shape_const(vshape)])
    try:
        broadcast = np.broadcast_shapes(vshape, target) == target
    except ValueError:
        broadcast = False
    if not broadcast:
        raise _refuse(ctx, f"with v of shape {vshape} for x[index] of shape {target}",
                      "v must broadcast to x[index]")
    _check_batch(ctx, tensor, vshape, len(target))
    if len(vshape) < len(target):
        tensor = ctx.op("Unsqueeze", [tensor, ctx.shape_const(range(len(target) - len(vshape)))])
    if squeezed:
        tensor = ctx.op("Unsqueeze", [tensor, ctx.shape_const(squeezed)])
    return tensor


def _check_batch(ctx: ExportContext, tensor: Any, vshape: tuple[int, ...], rank: int) -> None:
    """With a dynamic batch, v lined up with x's axis 0 must be size 1 or computed at run time
    (from the inputs, so it follows the batch): a constant sized to the traced batch would not."""
    lined_up = len(vshape) == rank and rank > 0 and vshape[0] != 1
    if ctx.dynamic_batch and lined_up and isinstance(tensor, gs.Constant):
        raise _refuse(ctx, f"with v of shape {vshape} along a dynamic batch",
                      "compute v from the batch (an input), or export without dynamic_batch")


def _is_range(positions: np.ndarray) -> bool:
    return bool(np.array_equal(positions, np.arange(positions[0], positions[0] + positions.size)))


def _slice(ctx: ExportContext, tensor: Any, axis: int, start: int, stop: int) -> Any:
    return ctx.op("Slice", [tensor, ctx.shape_const([start]), ctx.shape_const([stop]),
                            ctx.shape_const([axis])])


def _concat_write(ctx: ExportContext, expr: Any, x: Any, value: Any, written: list[Written],
                  region: list[int]) -> None:
    """x before the range, v, x after it, concatenated on each written axis in turn (the
    middle of the outer axes holds the inner ones); v is expanded to the region's shape
    (`x[...] = v`, nothing sliced, is v expanded to x's shape)."""
    base = ctx.value_of(x)
    shape = [int(d) for d in x.shape]
    ranges = [(axis, int(p[0]), int(p[0]) + p.size) for axis, p, _ in written]
    cut = base
    for axis, start, stop in ranges:
        cut = _slice(ctx, cut, axis, start, stop)
    target = ctx.op("Shape", [cut]) if ctx.dynamic_batch else ctx.shape_const(region)
    if not ranges:
        ctx.emit("Expand", [value, target], expr.outputs)
        return
    inner = ctx.op("Expand", [value, target])
    for depth in range(len(ranges) - 1, -1, -1):
        axis, start, stop = ranges[depth]
        outer = base
        for a, s, e in ranges[:depth]:
            outer = _slice(ctx, outer, a, s, e)
        pieces = ([_slice(ctx, outer, axis, 0, start)] if start > 0 else []) + [inner] + \
                 ([_slice(ctx, outer, axis, stop, shape[axis])] if stop < shape[axis] else [])
        if depth == 0:
            op, attrs = ("Concat", {"axis": axis}) if len(pieces) > 1 else ("Identity", {})
            ctx.emit(op, pieces, expr.outputs, **attrs)
        elif len(pieces) > 1:
            inner = ctx.op("Concat", pieces, axis=axis)


def _gather_write(ctx: ExportContext, expr: Any, x: Any, value: Any, written: list[Written],
                  shape: tuple[int, ...]) -> None:
    """Steps, reversed slices and index lists: v spread to full length along each written axis
    by a constant Gather (position j takes v's element written there), then Where(written)."""
    rank = len(shape)
    sizes = [1] * rank
    for axis, positions, _ in written:
        sizes[axis] = positions.size
    spread = ctx.op("Expand", [value, ctx.shape_const(sizes)])
    mask = np.ones([1] * rank, dtype=np.bool_)
    for axis, positions, _ in written:
        source = np.zeros(shape[axis], dtype=np.int64)
        source[positions] = np.arange(positions.size)  # a repeated position: the last write
        spread = ctx.op("Gather", [spread, ctx.const(source)], axis=axis)
        hit = np.zeros(shape[axis], dtype=np.bool_)
        hit[positions] = True
        mask = mask & hit.reshape([-1 if a == axis else 1 for a in range(rank)])
    ctx.emit("Where", [ctx.const(mask), spread, ctx.value_of(x)], expr.outputs)
