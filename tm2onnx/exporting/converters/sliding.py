"""F.nn.sliding_window (MegEngine's Images2Neibs; local correlation in stereo matching): the
(N, C, OH, OW, KH, KW) blocks as zero Pad, then one Gather of rows (OH, KH) on H and one of
columns (OW, KW) on W, and a Transpose: exact (data movement only) and three nodes whatever
the window size (CREStereo slides an H x W window over a padded feature)."""

from __future__ import annotations

from typing import Any

import megengine.functional as F
import numpy as np
from megengine.core.ops import builtin

from ...errors import ConversionError
from ..context import ExportContext
from . import apply_converter, function_converter
from ._util import call_args, cast_if_needed, tensor_dtype


@function_converter(F.nn.sliding_window)
def sliding_window(ctx: ExportContext, expr: Any) -> None:
    """The window may come from `x.shape` (CREStereo slides an H x W window): known sizes are
    folded; with a dynamic batch they are read at run time and the positions computed there."""
    args = call_args(expr)
    params = [_pair(ctx, args[name], name) for name in
              ("kernel_size", "padding", "stride", "dilation")]
    emit_sliding_window(ctx, expr, args["inp"], *params)


@apply_converter(builtin.Images2Neibs)
def images2neibs(ctx: ExportContext, expr: Any) -> None:
    """Raw `apply(Images2Neibs)` (sliding_window imported by name)."""
    op = expr.opdef
    emit_sliding_window(ctx, expr, expr.inputs[0], [op.window_h, op.window_w],
                        [op.pad_h, op.pad_w], [op.stride_h, op.stride_w],
                        [op.dilate_h, op.dilate_w])


def _pair(ctx: ExportContext, value: Any, name: str) -> list[Any]:
    """Two ints, or (kernel_size only) run-time scalar TensorNodes."""
    items = list(value) if isinstance(value, (list, tuple)) else [value, value]
    resolved = [int(ctx.known(item).reshape(-1)[0]) if _is_node(item) and ctx.is_known(item)
                else item if _is_node(item) else int(item) for item in items]
    if name != "kernel_size" and any(_is_node(item) for item in resolved):
        raise ConversionError(f"{ctx.base_name}: sliding_window {name} computed at run time",
                              where=ctx.source, hint=f"use a constant {name}")
    return resolved


def _is_node(value: Any) -> bool:
    return hasattr(value, "expr") and hasattr(value, "users")


def window_positions(ctx: ExportContext, size: int, kernel: Any, pad: int, stride: int,
                     dilation: int) -> Any:
    """(out, kernel) int64 positions in the padded axis: out * stride + tap * dilation, with
    out = (size + 2 pad - dilation (kernel - 1) - 1) // stride + 1."""
    if not _is_node(kernel):
        out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
        if out < 1:
            raise ConversionError(f"{ctx.base_name}: sliding_window of kernel {kernel} "
                                  f"(dilation {dilation}) larger than the padded size "
                                  f"{size + 2 * pad}", where=ctx.source,
                                  hint="check kernel_size and padding")
        return ctx.const((np.arange(out)[:, None] * stride
                          + np.arange(kernel)[None, :] * dilation).astype(np.int64))
    scalar = ctx.op("Reshape", [cast_if_needed(ctx, ctx.value_of(kernel), tensor_dtype(kernel),
                                               np.int64), ctx.shape_const([])])
    span = ctx.op("Mul", [ctx.op("Sub", [scalar, _i64(ctx, 1)]), _i64(ctx, dilation)])
    last = ctx.op("Sub", [_i64(ctx, size + 2 * pad - 1), span])  # >= 0 when the window fits
    out = ctx.op("Add", [ctx.op("Div", [last, _i64(ctx, stride)]), _i64(ctx, 1)])
    starts = ctx.op("Mul", [ctx.op("Range", [_i64(ctx, 0), out, _i64(ctx, 1)]),
                            _i64(ctx, stride)])
    taps = ctx.op("Mul", [ctx.op("Range", [_i64(ctx, 0), scalar, _i64(ctx, 1)]),
                          _i64(ctx, dilation)])
    return ctx.op("Add", [ctx.op("Unsqueeze", [starts, ctx.shape_const([1])]),
                          ctx.op("Unsqueeze", [taps, ctx.shape_const([0])])])


def _i64(ctx: ExportContext, value: int) -> Any:
    return ctx.const(np.asarray(value, dtype=np.int64))


def emit_sliding_window(ctx: ExportContext, expr: Any, x_node: Any, kernel: list[Any],
                        padding: list[int], stride: list[int], dilation: list[int]) -> None:
    shape = tuple(x_node.shape)
    if len(shape) != 4 or ctx.has_runtime_shape(x_node):
        raise ConversionError(f"{ctx.base_name}: sliding_window on a tensor of shape {shape}"
                              f"{' known only at run time' if len(shape) == 4 else ''}",
                              where=ctx.source, hint="slide over an (N, C, H, W) tensor whose "
                              "H and W are fixed at export time")
    rows, cols = (window_positions(ctx, int(shape[axis]), kernel[i], padding[i], stride[i],
                                   dilation[i]) for i, axis in enumerate((2, 3)))
    x = ctx.value_of(x_node)
    if any(padding):
        pads = [0, 0, padding[0], padding[1]] * 2
        x = ctx.op("Pad", [x, ctx.shape_const(pads)], mode="constant")
    by_rows = ctx.op("Gather", [x, rows], axis=2)  # (N, C, OH, KH, Wp)
    blocks = ctx.op("Gather", [by_rows, cols], axis=4)  # (N, C, OH, KH, OW, KW)
    ctx.emit("Transpose", [blocks], expr.outputs, perm=[0, 1, 2, 4, 3, 5])
