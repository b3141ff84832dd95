"""F.matinv (MegEngine's MatrixInverse; subspace projection in denoisers): ONNX's default
domain has no inverse (onnxruntime's com.microsoft Inverse is not portable), so the batched
inverse is Gauss-Jordan elimination with partial pivoting, unrolled over the static size n:
per column an ArgMax picks the pivot row, a GatherElements swaps it in (exact), the pivot row
is divided by the pivot and the other rows eliminated. That is LAPACK getrf/getri's pivoting
rule, sound for any non-singular matrix, not only symmetric positive definite ones."""

from __future__ import annotations

from typing import Any

import megengine.functional as F
import numpy as np
from megengine.core.ops import builtin

from ...errors import ConversionError
from ..context import ExportContext
from . import apply_converter, function_converter
from ._util import call_args

MAX_INVERSE_SIZE = 64  # 18 nodes per column: a 64x64 inverse is ~1160 nodes


@function_converter(F.matinv)
def matinv(ctx: ExportContext, expr: Any) -> None:
    emit_inverse(ctx, expr, call_args(expr)["inp"])


@apply_converter(builtin.MatrixInverse)
def matrix_inverse(ctx: ExportContext, expr: Any) -> None:
    """Raw `apply(MatrixInverse)` (matinv imported by name)."""
    emit_inverse(ctx, expr, expr.inputs[0])


def emit_inverse(ctx: ExportContext, expr: Any, x_node: Any) -> None:
    shape, dtype = tuple(x_node.shape), np.dtype(x_node.dtype)
    n = int(shape[-1]) if len(shape) >= 2 else 0
    if len(shape) < 2 or int(shape[-2]) != n or not 1 <= n <= MAX_INVERSE_SIZE \
            or dtype.kind != "f":
        raise ConversionError(f"{ctx.base_name}: matinv of a {dtype} tensor of shape {shape}",
                              where=ctx.source,
                              hint=f"tm2onnx inverts float [..., n, n] with n <= "
                              f"{MAX_INVERSE_SIZE} (unrolled Gauss-Jordan elimination)")
    x = ctx.value_of(x_node)
    identity = ctx.op("Expand", [ctx.const(np.eye(n, dtype=dtype)), ctx.op("Shape", [x])])
    joined = ctx.op("Concat", [x, identity], axis=-1)  # [..., n, 2n]: [A | I]
    work = ctx.op("Reshape", [joined, ctx.shape_const([-1, n, 2 * n])])
    rows = np.arange(n, dtype=np.int64)
    for k in range(n):
        work = _eliminate(ctx, work, k, rows, dtype)
    inverse = ctx.op("Slice", [work, ctx.shape_const([n]), ctx.shape_const([2 * n]),
                               ctx.shape_const([2])])
    ctx.emit("Reshape", [inverse, ctx.op("Shape", [x])], expr.outputs)


def _eliminate(ctx: ExportContext, work: Any, k: int, rows: np.ndarray, dtype: np.dtype
               ) -> Any:
    """One Gauss-Jordan step on [b, n, 2n]: pivot on column k among rows k.., swap, scale,
    eliminate column k from every other row."""
    column = ctx.op("Gather", [work, ctx.const(np.asarray(k, np.int64))], axis=2)  # [b, n]
    candidates = ctx.op("Where", [ctx.const(rows >= k), ctx.op("Abs", [column]),
                                  ctx.const(np.asarray(-1, dtype))])
    pivot = ctx.op("ArgMax", [candidates], axis=1, keepdims=1)  # [b, 1] int64
    at_k = ctx.const(rows == k)
    # row order after swapping rows k and pivot: k <- pivot, pivot <- k, others stay
    order = ctx.op("Where", [at_k, pivot, ctx.op("Where", [
        ctx.op("Equal", [ctx.const(rows), pivot]), ctx.const(np.asarray(k, np.int64)),
        ctx.const(rows)])])
    order = ctx.op("Expand", [ctx.op("Unsqueeze", [order, ctx.shape_const([2])]),
                              ctx.op("Shape", [work])])
    swapped = ctx.op("GatherElements", [work, order], axis=1)
    pivot_row = ctx.op("Slice", [swapped, ctx.shape_const([k]), ctx.shape_const([k + 1]),
                                 ctx.shape_const([1])])  # [b, 1, 2n]
    pivot_value = ctx.op("Slice", [pivot_row, ctx.shape_const([k]), ctx.shape_const([k + 1]),
                                   ctx.shape_const([2])])  # [b, 1, 1]
    pivot_row = ctx.op("Div", [pivot_row, pivot_value])
    factors = ctx.op("Slice", [swapped, ctx.shape_const([k]), ctx.shape_const([k + 1]),
                               ctx.shape_const([2])])  # [b, n, 1]
    eliminated = ctx.op("Sub", [swapped, ctx.op("Mul", [factors, pivot_row])])
    return ctx.op("Where", [ctx.const((rows == k).reshape(-1, 1)), pivot_row, eliminated])
