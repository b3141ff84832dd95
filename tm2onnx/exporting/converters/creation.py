"""Tensors built in forward from traced values: `mge.Tensor(t)` / `mge.Parameter(t)` (a port's
`mge.Tensor(lengths)`, or `mge.Tensor(F.arange(n))` once n comes from a dynamic shape), and
F.meshgrid (and its raw MeshGrid OpDef) on run-time vectors, e.g. a coordinate grid built from
`x.shape`. Constant cases never reach these: the walk folds them with MegEngine."""

from __future__ import annotations

from typing import Any

import megengine.functional as F
from megengine.core.ops import builtin
from megengine.traced_module.node import TensorNode

from ...errors import ConversionError
from ..context import ExportContext
from . import apply_converter, function_converter, method_converter
from ._util import call_args


@method_converter("__new__")
def tensor_new(ctx: ExportContext, expr: Any) -> None:
    """`Tensor(t, dtype=..., device=...)` of one traced tensor: the same values (MegEngine
    refuses a dtype other than t's; device placement is onnxruntime's)."""
    args = call_args(expr)
    data = args["args"][0] if args["args"] else args["kwargs"].get("data")
    if not isinstance(data, TensorNode):
        raise ConversionError(f"{ctx.base_name}: Tensor(...) of {type(data).__name__} holding "
                              "traced values", where=ctx.source,
                              hint="build it with F.stack/F.concat of the tensors instead")
    ctx.emit("Identity", [ctx.value_of(data)], expr.outputs)


@function_converter(F.meshgrid)
def meshgrid(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    emit_meshgrid(ctx, expr, list(args["inputs"]), str(args["indexing"]))


@apply_converter(builtin.MeshGrid)
def meshgrid_opdef(ctx: ExportContext, expr: Any) -> None:
    emit_meshgrid(ctx, expr, list(expr.inputs), str(expr.opdef.indexing))


def emit_meshgrid(ctx: ExportContext, expr: Any, nodes: list, indexing: str) -> None:
    """Input i varies along output axis i ("ij"); "xy" swaps the first two axes (x along
    columns; MegEngine accepts no other). Each vector is reshaped to -1 on its axis and
    expanded to the full grid."""
    count = len(nodes)
    axes = list(range(count))
    if indexing == "xy" and count >= 2:
        axes[0], axes[1] = 1, 0
    vectors = [ctx.value_of(node) for node in nodes]
    lengths = [ctx.op("Shape", [vector]) for vector in vectors]
    grid_shape = ctx.op("Concat", [lengths[axes.index(axis)] for axis in range(count)], axis=0)
    for vector, axis, out in zip(vectors, axes, expr.outputs):
        view = [1] * count
        view[axis] = -1
        column = ctx.op("Reshape", [vector, ctx.shape_const(view)])
        ctx.emit("Expand", [column, grid_shape], [out])
