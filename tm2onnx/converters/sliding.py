"""F.nn.sliding_window (MegEngine's Images2Neibs; local correlation in stereo matching): the
(N, C, OH, OW, KH, KW) blocks as zero Pad, then one Gather of rows (OH, KH) on H and one of
columns (OW, KW) on W, and a Transpose: exact (data movement only) and three nodes whatever
the window size (CREStereo slides an H x W window over a padded feature)."""

from __future__ import annotations

from typing import Any

import megengine.functional as F
import numpy as np
from megengine.core.ops import builtin

from ..context import ExportContext
from ..errors import ConversionError
from . import apply_converter, function_converter
from ._util import call_args, pair


@function_converter(F.nn.sliding_window)
def sliding_window(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_sliding_window(ctx, expr, args["inp"], pair(args["kernel_size"]), pair(args["padding"]),
                        pair(args["stride"]), pair(args["dilation"]))


@apply_converter(builtin.Images2Neibs)
def images2neibs(ctx: ExportContext, expr: Any) -> None:
    """Raw `apply(Images2Neibs)` (sliding_window imported by name)."""
    op = expr.opdef
    emit_sliding_window(ctx, expr, expr.inputs[0], [op.window_h, op.window_w],
                        [op.pad_h, op.pad_w], [op.stride_h, op.stride_w],
                        [op.dilate_h, op.dilate_w])


def window_positions(size: int, kernel: int, pad: int, stride: int, dilation: int
                     ) -> np.ndarray:
    """(out, kernel) int64 positions in the padded axis: out * stride + tap * dilation."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    return (np.arange(out)[:, None] * stride + np.arange(kernel)[None, :] * dilation
            ).astype(np.int64)


def emit_sliding_window(ctx: ExportContext, expr: Any, x_node: Any, kernel: list[int],
                        padding: list[int], stride: list[int], dilation: list[int]) -> None:
    shape = tuple(x_node.shape)
    if len(shape) != 4 or ctx.has_runtime_shape(x_node):
        raise ConversionError(f"{ctx.base_name}: sliding_window on a tensor of shape {shape}"
                              f"{' known only at run time' if len(shape) == 4 else ''}",
                              where=ctx.source, hint="slide over an (N, C, H, W) tensor whose "
                              "H and W are fixed at export time")
    rows, cols = (window_positions(int(shape[axis]), kernel[i], padding[i], stride[i],
                                   dilation[i]) for i, axis in enumerate((2, 3)))
    if min(rows.shape[0], cols.shape[0]) < 1:
        raise ConversionError(f"{ctx.base_name}: sliding_window of kernel {kernel} (dilation "
                              f"{dilation}) larger than the padded input {shape[2:]}",
                              where=ctx.source, hint="check kernel_size and padding")
    x = ctx.value_of(x_node)
    if any(padding):
        pads = [0, 0, padding[0], padding[1]] * 2
        x = ctx.op("Pad", [x, ctx.shape_const(pads)], mode="constant")
    by_rows = ctx.op("Gather", [x, ctx.const(rows)], axis=2)  # (N, C, OH, KH, Wp)
    blocks = ctx.op("Gather", [by_rows, ctx.const(cols)], axis=4)  # (N, C, OH, KH, OW, KW)
    ctx.emit("Transpose", [blocks], expr.outputs, perm=[0, 1, 2, 4, 3, 5])
