"""Linear layers and matrix products: Linear (Gemm for 2-D input, MatMul+Add otherwise),
F.linear, F.matmul and `@` with MegEngine's transpose flags, BatchMatMulActivation, and
Embedding lookups as Gather."""

from __future__ import annotations

from typing import Any

import megengine.functional as F
import megengine.module as M
import numpy as np
from megengine.traced_module.node import TensorNode

from ...errors import ConversionError
from ..context import ExportContext
from . import function_converter, method_converter, module_converter
from ._util import call_args, cast_if_needed, out_dtype, tensor_dtype


def emit_linear(ctx: ExportContext, x: Any, rank: int, weight: np.ndarray,
                bias: np.ndarray | None, outputs: list, *, dtype: np.dtype,
                prefix: str = "") -> None:
    """x @ weight.T + bias for an (out, in) weight: one Gemm(transB=1) for 2-D x (what
    runtimes fuse best), else MatMul with the weight transposed at export time, then Add."""
    bias_const = None if bias is None else ctx.param(f"{prefix}bias",
                                                     bias.reshape(-1).astype(dtype))
    if rank == 2:
        inputs = [x, ctx.param(f"{prefix}weight", weight.astype(dtype))]
        ctx.emit("Gemm", inputs + ([bias_const] if bias_const is not None else []), outputs,
                 transB=1)
        return
    weight_t = ctx.param(f"{prefix}weight_t", np.ascontiguousarray(weight.T.astype(dtype)))
    if bias_const is None:
        ctx.emit("MatMul", [x, weight_t], outputs)
    else:
        ctx.emit("Add", [ctx.op("MatMul", [x, weight_t]), bias_const], outputs)


def linear_arrays(linear: Any) -> tuple[np.ndarray, np.ndarray | None]:
    return linear.weight.numpy(), None if linear.bias is None else linear.bias.numpy()


def refuse_quantized(ctx: ExportContext, module: Any) -> None:
    """qat.Linear, qat.LinearRelu and quantized.BatchMatMulActivation subclass the float
    modules; converting them as float would drop fake-quantization (and qat.LinearRelu's
    Relu), so refuse unless a converter registered for the quantized class itself."""
    package = type(module).__module__
    if package.startswith(("megengine.module.qat", "megengine.module.quantized")):
        raise ConversionError(f"{ctx.module_path}: {package}.{type(module).__name__} has no "
                              "ONNX converter", where=ctx.source,
                              hint="export the float model (before quantize_qat/quantize)")


@module_converter(M.Linear)
def linear_module(ctx: ExportContext, expr: Any, linear: Any) -> None:
    refuse_quantized(ctx, linear)
    x, dtype = expr.inputs[1], out_dtype(expr)
    weight, bias = linear_arrays(linear)
    value = cast_if_needed(ctx, ctx.value_of(x), tensor_dtype(x), dtype)
    emit_linear(ctx, value, len(x.shape), weight, bias, expr.outputs, dtype=dtype)


@function_converter(F.linear)
def linear_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    x, weight, bias, dtype = args["inp"], args["weight"], args.get("bias"), out_dtype(expr)
    out_shape = tuple(expr.outputs[0].shape)
    bias_tensor = None if bias is None else _operand(ctx, bias, False, dtype)
    # Gemm only when the bias cannot grow the (batch, out) product by broadcasting
    if len(x.shape) == 2 and len(weight.shape) == 2 and \
            out_shape == (x.shape[0], weight.shape[0]) and _rank(bias) <= 2:
        inputs = [_operand(ctx, x, False, dtype), _operand(ctx, weight, False, dtype)]
        ctx.emit("Gemm", inputs + ([bias_tensor] if bias_tensor is not None else []),
                 expr.outputs, transB=1)
        return
    product = [_operand(ctx, x, False, dtype), _operand(ctx, weight, True, dtype)]
    if bias_tensor is None:
        ctx.emit("MatMul", product, expr.outputs)
    else:
        ctx.emit("Add", [ctx.op("MatMul", product), bias_tensor], expr.outputs)


@function_converter(F.matmul)
def matmul_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _emit_matmul(ctx, expr, args["inp1"], args["inp2"], bool(args.get("transpose_a")),
                 bool(args.get("transpose_b")))


@method_converter("__matmul__", "__imatmul__")
def matmul_method(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _emit_matmul(ctx, expr, args["self"], args["other"], False, False)


@method_converter("__rmatmul__")
def rmatmul_method(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _emit_matmul(ctx, expr, args["other"], args["self"], False, False)


def _emit_matmul(ctx: ExportContext, expr: Any, a: Any, b: Any, transpose_a: bool,
                 transpose_b: bool) -> None:
    """ONNX MatMul has numpy semantics (1-D promotion, batch broadcasting), which is what
    MegEngine computes whenever it accepts the shapes; only the transpose flags need nodes."""
    dtype = out_dtype(expr)
    ctx.emit("MatMul", [_operand(ctx, a, transpose_a, dtype),
                        _operand(ctx, b, transpose_b, dtype)], expr.outputs)


@module_converter(M.BatchMatMulActivation)
def batch_matmul_activation(ctx: ExportContext, expr: Any, module: Any) -> None:
    """relu?(weight @ x + bias) with a (batch, out, in) weight and no transposes."""
    refuse_quantized(ctx, module)
    dtype, mode = out_dtype(expr), str(module.nonlinear_mode).lower()
    if mode not in ("identity", "relu"):
        raise ConversionError(f"{ctx.module_path}: nonlinear_mode={mode!r} is not supported",
                              where=ctx.source, hint="use 'identity' or 'relu'")
    steps = [("MatMul", [ctx.param("weight", module.weight.numpy().astype(dtype))])]
    if module.bias is not None:
        steps.append(("Add", [ctx.param("bias", module.bias.numpy().astype(dtype))]))
    if mode == "relu":
        steps.append(("Relu", []))
    value = ctx.value_of(expr.inputs[1])
    for index, (op, extra) in enumerate(steps):
        inputs = extra + [value] if op == "MatMul" else [value] + extra
        if index == len(steps) - 1:
            ctx.emit(op, inputs, expr.outputs)
        else:
            value = ctx.op(op, inputs)


@module_converter(M.Embedding)
def embedding_module(ctx: ExportContext, expr: Any, embedding: Any) -> None:
    weight = ctx.param("weight", embedding.weight.numpy().astype(out_dtype(expr)))
    ctx.emit("Gather", [weight, _indices(ctx, expr.inputs[1])], expr.outputs, axis=0)


@function_converter(F.embedding)
def embedding_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    weight = _operand(ctx, args["weight"], False, out_dtype(expr))
    ctx.emit("Gather", [weight, _indices(ctx, args["inp"])], expr.outputs, axis=0)


def _indices(ctx: ExportContext, node: Any) -> Any:
    """Gather takes int32 or int64 indices; anything else is cast to int64."""
    have = tensor_dtype(node)
    if have is not None and have in (np.dtype(np.int32), np.dtype(np.int64)):
        return ctx.value_of(node)
    return cast_if_needed(ctx, ctx.value_of(node), have, np.dtype(np.int64))


def _rank(value: Any) -> int:
    if value is None:
        return 0
    return len(value.shape) if isinstance(value, TensorNode) else np.ndim(value)


def _operand(ctx: ExportContext, value: Any, transpose: bool, dtype: np.dtype) -> Any:
    """The value in `dtype`, its last two axes swapped when `transpose`. A 1-D operand keeps
    its flag unapplied: MegEngine rejects a transposed vector unless its length is 1, where
    transposing changes nothing. Known values are transposed at export time."""
    rank = _rank(value)
    swap = transpose and rank >= 2
    if not isinstance(value, TensorNode) or ctx.is_known(value):
        array = ctx.known(value) if isinstance(value, TensorNode) else np.asarray(value)
        if not swap and isinstance(value, TensorNode) and array.dtype == dtype:
            return ctx.value_of(value)  # the shared initializer, named after the attribute
        array = np.swapaxes(array, -1, -2) if swap else array
        return ctx.const(np.asarray(array.astype(dtype), order="C"))  # 0-d stays 0-d
    tensor = cast_if_needed(ctx, ctx.value_of(value), tensor_dtype(value), dtype)
    if not swap:
        return tensor
    return ctx.op("Transpose", [tensor], perm=list(range(rank - 2)) + [rank - 1, rank - 2])
