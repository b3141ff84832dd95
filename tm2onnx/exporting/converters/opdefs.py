"""Raw `apply(OpDef)` exprs, traced when a helper module imported MegEngine functions by name
(TracedModule patches only the traced forward's own globals): each OpDef behind a converted
function reuses that function's emitter, with sizes read from this call's output nodes."""

from __future__ import annotations

from typing import Any

import numpy as np
from megengine.core.ops import builtin

from ...errors import ConversionError
from ..context import ExportContext
from . import apply_converter
from ._util import int64_vector, normalize_axis, onnx_dtype, out_dtype
from .activation import emit_elemwise
from .linear import _emit_matmul
from .misc import emit_pad, emit_resize
from .pool import emit_adaptive_pool
from .reduce import REDUCE_OPS, emit_reduce
from .shape import emit_concat, emit_stack, emit_transpose
from .softmax import emit_softmax

RESIZE_IMODES = {"linear": "bilinear", "nearest": "nearest", "cubic": "bicubic"}
ADAPTIVE_MODES = {"average": "AveragePool", "max": "MaxPool"}


def _mode(enum_value: Any) -> str:
    return str(enum_value).rsplit(".", 1)[-1].lower()  # Reduce.Mode.SUM -> "sum"


@apply_converter(builtin.MatrixMul, builtin.BatchedMatrixMul)
def matrix_mul(ctx: ExportContext, expr: Any) -> None:
    a, b = expr.inputs
    _emit_matmul(ctx, expr, a, b, bool(expr.opdef.transposeA), bool(expr.opdef.transposeB))


@apply_converter(builtin.Copy)
def copy(ctx: ExportContext, expr: Any) -> None:
    """`Tensor.to(device)` moves a tensor between devices: nothing to compute in an export
    (onnxruntime places tensors itself)."""
    ctx.emit("Identity", [ctx.value_of(expr.inputs[0])], expr.outputs)


@apply_converter(builtin.Softmax)
def softmax(ctx: ExportContext, expr: Any) -> None:
    emit_softmax(ctx, expr.inputs[0], int(expr.opdef.axis), expr.outputs, log=False)


@apply_converter(builtin.Split)
def split(ctx: ExportContext, expr: Any) -> None:
    """The size inputs are this call's; the output nodes carry them as shapes."""
    x = expr.inputs[0]
    axis = normalize_axis(int(expr.opdef.axis), len(x.shape))
    if ctx.is_batch_axis(x, axis):
        raise ConversionError(f"{ctx.base_name}: apply(Split) of the dynamic batch axis",
                              where=ctx.source, hint="export without dynamic_batch")
    sizes = [int(out.shape[axis]) for out in expr.outputs]
    ctx.emit("Split", [ctx.value_of(x), ctx.shape_const(sizes)], expr.outputs, axis=axis)


@apply_converter(builtin.Concat)
def concat(ctx: ExportContext, expr: Any) -> None:
    emit_concat(ctx, expr, list(expr.inputs), int(expr.opdef.axis))


@apply_converter(builtin.Stack)
def stack(ctx: ExportContext, expr: Any) -> None:
    emit_stack(ctx, expr, list(expr.inputs), int(expr.opdef.axis))


@apply_converter(builtin.Elemwise)
def elemwise(ctx: ExportContext, expr: Any) -> None:
    emit_elemwise(ctx, expr, str(expr.opdef.mode), list(expr.inputs))


@apply_converter(builtin.Broadcast)
def broadcast(ctx: ExportContext, expr: Any) -> None:
    x, shape = expr.inputs
    ctx.emit("Expand", [ctx.value_of(x), int64_vector(ctx, [shape])], expr.outputs)


@apply_converter(builtin.Reshape)
def reshape(ctx: ExportContext, expr: Any) -> None:
    x, shape = expr.inputs
    ctx.emit("Reshape", [ctx.value_of(x), int64_vector(ctx, [shape])], expr.outputs)


@apply_converter(builtin.AddAxis)
def add_axis(ctx: ExportContext, expr: Any) -> None:
    axes = [int(a) for a in expr.opdef.axis]
    ctx.emit("Unsqueeze", [ctx.value_of(expr.inputs[0]), ctx.shape_const(axes)], expr.outputs)


@apply_converter(builtin.RemoveAxis)
def remove_axis(ctx: ExportContext, expr: Any) -> None:
    """MegEngine removes the listed axes one after another (each index counted after the
    previous removals); ONNX Squeeze takes them all in input numbering."""
    original: list[int] = []
    for axis in (int(a) for a in expr.opdef.axis):
        for earlier in sorted(original):
            axis += axis >= earlier
        original.append(axis)
    ctx.emit("Squeeze", [ctx.value_of(expr.inputs[0]), ctx.shape_const(sorted(original))],
             expr.outputs)


@apply_converter(builtin.Dimshuffle)
def dimshuffle(ctx: ExportContext, expr: Any) -> None:
    pattern = ["x" if int(p) < 0 else int(p) for p in expr.opdef.pattern]
    emit_transpose(ctx, expr, expr.inputs[0], pattern)


@apply_converter(builtin.TypeCvt)
def type_cvt(ctx: ExportContext, expr: Any) -> None:
    ctx.emit("Cast", [ctx.value_of(expr.inputs[0])], expr.outputs,
             to=onnx_dtype(out_dtype(expr)))


@apply_converter(builtin.Reduce)
def reduce(ctx: ExportContext, expr: Any) -> None:
    """An axis out of range (MegEngine's default) reduces every axis."""
    mode, x = _mode(expr.opdef.mode), expr.inputs[0]
    mode = {"product": "prod"}.get(mode, mode)
    if mode not in REDUCE_OPS or len(expr.inputs) != 1:
        raise ConversionError(f"{ctx.base_name}: apply(Reduce) mode {mode!r}", where=ctx.source,
                              hint=f"tm2onnx converts modes {sorted(REDUCE_OPS)}")
    rank, axis = len(x.shape), int(expr.opdef.axis)
    if -rank <= axis < rank:
        emit_reduce(ctx, expr, REDUCE_OPS[mode], x, axis, bool(expr.opdef.keepdim))
    else:  # to a 0-d tensor, whatever keepdim says
        emit_reduce(ctx, expr, REDUCE_OPS[mode], x, None, False)


@apply_converter(builtin.Argmax, builtin.Argmin)
def arg_reduce(ctx: ExportContext, expr: Any) -> None:
    """MegEngine keeps the axis and returns int32."""
    op = "ArgMax" if isinstance(expr.opdef, builtin.Argmax) else "ArgMin"
    x = expr.inputs[0]
    index = ctx.op(op, [ctx.value_of(x)], axis=normalize_axis(int(expr.opdef.axis),
                                                              len(x.shape)), keepdims=1)
    ctx.emit("Cast", [index], expr.outputs, to=onnx_dtype(out_dtype(expr)))


@apply_converter(builtin.Cumsum)
def cumsum(ctx: ExportContext, expr: Any) -> None:
    x = expr.inputs[0]
    axis = ctx.const(np.asarray(normalize_axis(int(expr.opdef.axis), len(x.shape)), np.int64))
    ctx.emit("CumSum", [ctx.value_of(x), axis], expr.outputs,
             exclusive=int(bool(expr.opdef.exclusive)), reverse=int(bool(expr.opdef.reverse)))


@apply_converter(builtin.Padding)
def padding(ctx: ExportContext, expr: Any) -> None:
    x, opdef = expr.inputs[0], expr.opdef
    pad_width = [(getattr(opdef, f"front_offset_dim{i}"), getattr(opdef, f"back_offset_dim{i}"))
                 for i in range(len(x.shape))]
    emit_pad(ctx, expr, x, pad_width, _mode(opdef.padding_mode), float(opdef.padding_val))


@apply_converter(builtin.Resize)
def resize(ctx: ExportContext, expr: Any) -> None:
    """F.vision.interpolate without align_corners (with it, MegEngine uses warp_perspective)."""
    imode = _mode(expr.opdef.imode)
    if imode not in RESIZE_IMODES or len(expr.inputs[0].shape) != 4:
        raise ConversionError(f"{ctx.base_name}: apply(Resize) imode {imode!r}",
                              where=ctx.source, hint=f"tm2onnx converts {sorted(RESIZE_IMODES)}")
    emit_resize(ctx, expr, expr.inputs[0], RESIZE_IMODES[imode], False)


@apply_converter(builtin.AdaptivePooling)
def adaptive_pooling(ctx: ExportContext, expr: Any) -> None:
    mode = _mode(expr.opdef.mode)
    out = [int(d) for d in expr.outputs[0].shape[2:]]
    emit_adaptive_pool(ctx, expr, expr.inputs[0], out, op=ADAPTIVE_MODES[mode])


@apply_converter(builtin.LayerNorm)
def layer_norm(ctx: ExportContext, expr: Any) -> None:
    """Three outputs: y, and the mean and 1/std over the normalized dims (flattened)."""
    x, opdef, dtype = expr.inputs[0], expr.opdef, out_dtype(expr)
    if ctx.opset < 17:
        raise ConversionError(f"{ctx.base_name}: apply(LayerNorm) needs opset >= 17",
                              where=ctx.source, hint="export with --opset 17 or newer")
    count = int(opdef.normalized_dim)
    shape = [int(d) for d in x.shape[-count:]]
    if opdef.affine:
        scale, bias = (ctx.value_of(node) for node in expr.inputs[1:3])
    else:
        scale, bias = ctx.const(np.ones(shape, dtype)), ctx.const(np.zeros(shape, dtype))
    y, mean, inv_std = ctx.op("LayerNormalization", [ctx.value_of(x), scale, bias], outputs=3,
                              axis=-count, epsilon=float(opdef.eps))
    ctx.emit("Identity", [y], expr.outputs[:1])
    for value, node in zip((mean, inv_std), expr.outputs[1:]):
        ctx.emit("Reshape", [value, ctx.shape_const([int(d) for d in node.shape])], [node])
