"""Small helpers shared by converters: argument lookup, attribute normalisation, dtypes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..context import ExportContext


def call_args(expr: Any) -> dict[str, Any]:
    """The expr's arguments by parameter name, defaults filled in (inspect.getcallargs).
    Variadic parameters (`*args`) come back as a tuple under their own name."""
    return expr.named_args


def tensor_dtype(node: Any) -> np.dtype | None:
    dtype = getattr(node, "dtype", None)
    return np.dtype(dtype) if dtype is not None else None


def out_dtype(expr: Any, index: int = 0) -> np.dtype:
    return np.dtype(expr.outputs[index].dtype)


def ntuple(value: Any, count: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"expected {count} values, got {value}")
        return [int(v) for v in value]
    return [int(value)] * count


def pair(value: Any) -> list[int]:
    return ntuple(value, 2)


def symmetric_pads(padding: Any, spatial: int) -> list[int]:
    """MegEngine's per-axis padding as ONNX begin..., end... pads."""
    per_axis = ntuple(padding, spatial)
    return per_axis + per_axis


def rank_of(node: Any) -> int:
    return len(node.shape)


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def cast_if_needed(ctx: ExportContext, tensor: Any, have: np.dtype | None,
                   want: np.dtype) -> Any:
    from onnx import helper

    if have is not None and np.dtype(have) == np.dtype(want):
        return tensor
    return ctx.op("Cast", [tensor], to=helper.np_dtype_to_tensor_dtype(np.dtype(want)))


def onnx_dtype(dtype: Any) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def int64_vector(ctx: ExportContext, values: Sequence[Any]) -> Any:
    """An int64 1-D tensor from ints, known TensorNodes and runtime scalar TensorNodes:
    a constant when everything is known at export time, else a Concat of pieces."""
    constants: list[int] = []
    pieces: list[Any] = []
    dynamic = False
    for value in values:
        if hasattr(value, "expr") and not ctx.is_known(value):
            dynamic = True
            break
    if not dynamic:
        for value in values:
            constants.extend(np.asarray(ctx.known(value) if hasattr(value, "expr") else value)
                             .astype(np.int64).reshape(-1).tolist())
        return ctx.shape_const(constants)
    for value in values:
        if hasattr(value, "expr") and not ctx.is_known(value):
            tensor = cast_if_needed(ctx, ctx.value_of(value), tensor_dtype(value), np.int64)
            pieces.append(ctx.op("Reshape", [tensor, ctx.shape_const([-1])]))
        else:
            known = ctx.known(value) if hasattr(value, "expr") else value
            pieces.append(ctx.shape_const(np.asarray(known).astype(np.int64).reshape(-1)))
    return ctx.op("Concat", pieces, axis=0)
