"""`x[i, j]` with several array (or array and integer) indices, numpy's advanced indexing as
MegEngine 1.13 does it (checked against it, `tests/converters/test_gather_nd.py`): the index
arrays broadcast to one shape S; the indexed axes are moved to the front and gathered at once
with GatherND; S then stands where the first indexed axis stood when the indexed axes are
adjacent, else in front. A `None` counts as a sliced axis of size 1 (it breaks adjacency)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..context import ExportContext
from ._util import cast_if_needed, int64_vector, tensor_dtype
from .indexing import _kind, _slice_parts, is_full, is_node  # indexing imports us lazily


def advanced_index(ctx: ExportContext, expr: Any, x_node: Any, items: list) -> None:
    """`items` has one entry per input axis plus the `None`s (indexing.expand_index)."""
    x = ctx.value_of(x_node)
    new_axes = [position for position, item in enumerate(items) if item is None]
    if new_axes:
        x = ctx.op("Unsqueeze", [x, ctx.shape_const(new_axes)])
    items = [slice(None) if item is None else item for item in items]
    kinds = [_kind(ctx, item) for item in items]
    slices = [(axis, *_slice_parts(ctx, item)) for axis, (item, kind) in
              enumerate(zip(items, kinds)) if kind == "slice" and not is_full(item)]
    if slices:
        axes, starts, stops, steps = zip(*slices)
        x = ctx.op("Slice", [x, int64_vector(ctx, starts), int64_vector(ctx, stops),
                             ctx.shape_const(axes), ctx.shape_const(steps)])
    indexed = [axis for axis, kind in enumerate(kinds) if kind in ("int", "array")]
    kept = [axis for axis, kind in enumerate(kinds) if kind == "slice"]
    if indexed + kept != list(range(len(items))):
        x = ctx.op("Transpose", [x], perm=indexed + kept)
    indices, rank = _stacked_indices(ctx, [items[axis] for axis in indexed])
    adjacent = indexed == list(range(indexed[0], indexed[-1] + 1))
    before = indexed[0] if adjacent else 0  # kept axes that stay in front of S
    if before == 0:
        ctx.emit("GatherND", [x, indices], expr.outputs)
        return
    gathered = ctx.op("GatherND", [x, indices])
    perm = (list(range(rank, rank + before)) + list(range(rank))
            + list(range(rank + before, rank + len(kept))))
    ctx.emit("Transpose", [gathered], expr.outputs, perm=perm)


def _stacked_indices(ctx: ExportContext, items: list) -> tuple[Any, int]:
    """(int64 indices of shape S + (len(items),), rank of S): GatherND's index tensor."""
    static = not ctx.dynamic_batch and not any(
        is_node(item) and ctx.has_runtime_shape(item) for item in items)
    shapes = [tuple(item.shape or ()) if is_node(item) else np.shape(item) for item in items]
    rank = max(len(shape) for shape in shapes)
    tensors = [_index_tensor(ctx, item) for item in items]
    if static:
        target = tuple(int(d) for d in np.broadcast_shapes(*shapes))
        tensors = [tensor if shape == target else
                   ctx.op("Expand", [tensor, ctx.shape_const(target)])
                   for tensor, shape in zip(tensors, shapes)]
    else:  # Expand broadcasts both ways: chaining it over every index gives S at run time
        common = tensors[0]
        for tensor in tensors[1:]:
            common = ctx.op("Expand", [common, ctx.op("Shape", [tensor])])
        target_shape = ctx.op("Shape", [common])
        tensors = [ctx.op("Expand", [tensor, target_shape]) for tensor in tensors]
    last = ctx.shape_const([-1])
    columns = [ctx.op("Unsqueeze", [tensor, last]) for tensor in tensors]
    return ctx.op("Concat", columns, axis=-1), rank


def _index_tensor(ctx: ExportContext, item: Any) -> Any:
    """An int64 tensor (negative values as they are: GatherND counts them from the end)."""
    if not is_node(item) or ctx.is_known(item):
        return ctx.const(np.asarray(ctx.known(item) if is_node(item) else item, dtype=np.int64))
    return cast_if_needed(ctx, ctx.value_of(item), tensor_dtype(item), np.int64)
