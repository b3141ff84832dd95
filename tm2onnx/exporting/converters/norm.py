"""Normalization: BatchNorm (running stats, or batch stats when none are tracked), LayerNorm,
GroupNorm, InstanceNorm, GeneralNorm and F.normalize. Where ONNX has no op (or not at this
opset), `(x - mean) / sqrt(var + eps)` is spelled out with the biased variance MegEngine uses."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import megengine.functional as F
import megengine.module as M
import numpy as np
from megengine.traced_module.node import TensorNode

from ..context import ExportContext
from . import function_converter, module_converter
from ._util import call_args, cast_if_needed, onnx_dtype, out_dtype, tensor_dtype
from .reduce import reduce_op  # axes as attribute or input, by opset


@dataclass(frozen=True)
class NormParams:
    """Affine and statistics arguments as given: a module attribute, a TensorNode or None.
    `prefix` names initializers after the attribute path (`bn.running_mean` in ConvBn2d)."""

    weight: Any = None
    bias: Any = None
    mean: Any = None
    var: Any = None
    eps: float = 1e-5
    prefix: str = ""


def bn_params(bn: Any, prefix: str = "") -> NormParams:
    """A BatchNorm module's arguments as its forward passes them in eval mode."""
    tracked = bn.track_running_stats
    return NormParams(bn.weight if bn.affine else None, bn.bias if bn.affine else None,
                      bn.running_mean if tracked else None, bn.running_var if tracked else None,
                      float(bn.eps), prefix)


def emit_batch_norm(ctx: ExportContext, x: Any, outputs: list, params: NormParams, *,
                    channels: int, rank: int, dtype: np.dtype) -> None:
    """BatchNormalization with the module's eps; batch statistics when no running stats."""
    if params.mean is None or params.var is None:
        axes = [0] + list(range(2, rank))
        shape = [channels] + [1] * (rank - 2)
        return _standardize_affine(ctx, x, axes, params, shape, dtype, outputs)
    vector = [channels]
    scale = _param(ctx, params, "weight", vector, dtype, fill=1)
    bias = _param(ctx, params, "bias", vector, dtype, fill=0)
    mean = _param(ctx, params, "mean", vector, dtype)
    var = _param(ctx, params, "var", vector, dtype)
    ctx.emit("BatchNormalization", [x, scale, bias, mean, var], outputs, epsilon=params.eps)
    return None


@module_converter(M.BatchNorm1d, M.BatchNorm2d, M.SyncBatchNorm)
def batch_norm_module(ctx: ExportContext, expr: Any, bn: Any) -> None:
    _batch_norm_call(ctx, expr, expr.inputs[1], bn_params(bn))


@function_converter(F.batch_norm)
def batch_norm_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    x = args["inp"]
    training = bool(args.get("training", False))
    params = NormParams(args.get("weight"), args.get("bias"),
                        None if training else args.get("running_mean"),
                        None if training else args.get("running_var"), float(args["eps"]))
    _batch_norm_call(ctx, expr, x, params)


def _batch_norm_call(ctx: ExportContext, expr: Any, x: Any, params: NormParams) -> None:
    dtype = out_dtype(expr)
    value = cast_if_needed(ctx, ctx.value_of(x), tensor_dtype(x), dtype)
    emit_batch_norm(ctx, value, expr.outputs, params, channels=int(x.shape[1]),
                    rank=len(x.shape), dtype=dtype)


def _layer_norm(ctx: ExportContext, expr: Any, x: Any, normalized_shape: Any,
                params: NormParams) -> None:
    shape = [normalized_shape] if isinstance(normalized_shape, int) else list(normalized_shape)
    rank, count, dtype = len(x.shape), len(shape), out_dtype(expr)
    if ctx.opset < 17:  # LayerNormalization arrived at opset 17
        axes = list(range(rank - count, rank))
        return _standardize_affine(ctx, ctx.value_of(x), axes, params, shape, dtype,
                                   expr.outputs)
    scale = _param(ctx, params, "weight", shape, dtype, fill=1)
    bias = _param(ctx, params, "bias", shape, dtype)
    ctx.emit("LayerNormalization", [ctx.value_of(x), scale, bias], expr.outputs,
             axis=-count, epsilon=params.eps)
    return None


@module_converter(M.LayerNorm)
def layer_norm_module(ctx: ExportContext, expr: Any, norm: Any) -> None:
    _layer_norm(ctx, expr, expr.inputs[1], norm.normalized_shape, _affine_params(norm))


@function_converter(F.layer_norm)
def layer_norm_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _layer_norm(ctx, expr, args["inp"], args["normalized_shape"], _affine_args(args))


def _group_norm(ctx: ExportContext, expr: Any, x: Any, groups: int, params: NormParams
                ) -> None:
    """Normalize each (sample, group) slice: reshape to (N, G, -1), standardize the last axis,
    reshape back, then the per-channel affine."""
    rank, channels, dtype = len(x.shape), int(x.shape[1]), out_dtype(expr)
    value = ctx.value_of(x)
    grouped = ctx.op("Reshape", [value, ctx.shape_const([0, groups, -1])])
    standardized = _standardize(ctx, grouped, [2], params.eps, dtype, None)
    has_affine = params.weight is not None or params.bias is not None
    restored = _node(ctx, "Reshape", [standardized, ctx.op("Shape", [value])],
                     None if has_affine else expr.outputs)
    if has_affine:
        _affine(ctx, restored, params, [channels] + [1] * (rank - 2), dtype, expr.outputs)


@module_converter(M.GroupNorm)
def group_norm_module(ctx: ExportContext, expr: Any, norm: Any) -> None:
    _group_norm(ctx, expr, expr.inputs[1], int(norm.num_groups), _affine_params(norm))


@function_converter(F.nn.group_norm)
def group_norm_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _group_norm(ctx, expr, args["inp"], int(args["num_groups"]), _affine_args(args))


def _instance_norm(ctx: ExportContext, expr: Any, x: Any, params: NormParams) -> None:
    vector, dtype = [int(x.shape[1])], out_dtype(expr)
    scale = _param(ctx, params, "weight", vector, dtype, fill=1)
    bias = _param(ctx, params, "bias", vector, dtype, fill=0)
    ctx.emit("InstanceNormalization", [ctx.value_of(x), scale, bias], expr.outputs,
             epsilon=params.eps)


@module_converter(M.InstanceNorm)
def instance_norm_module(ctx: ExportContext, expr: Any, norm: Any) -> None:
    _instance_norm(ctx, expr, expr.inputs[1], _affine_params(norm))


@function_converter(F.nn.instance_norm)
def instance_norm_function(ctx: ExportContext, expr: Any) -> None:
    _instance_norm(ctx, expr, call_args(expr)["inp"], _affine_args(call_args(expr)))


def _general_norm(ctx: ExportContext, expr: Any, x: Any, axes: Any, params: NormParams
                  ) -> None:
    rank = len(x.shape)
    axes = sorted(a % rank for a in ([axes] if isinstance(axes, int) else axes))
    shape = [int(x.shape[a]) if a in axes else 1 for a in range(rank)]
    _standardize_affine(ctx, ctx.value_of(x), axes, params, shape, out_dtype(expr),
                        expr.outputs)


@module_converter(M.GeneralNorm)
def general_norm_module(ctx: ExportContext, expr: Any, norm: Any) -> None:
    _general_norm(ctx, expr, expr.inputs[1], norm.normalized_axis, _affine_params(norm))


@function_converter(F.nn.general_norm)
def general_norm_function(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _general_norm(ctx, expr, args["inp"], args["normalized_axis"], _affine_args(args))


@function_converter(F.normalize)
def normalize_function(ctx: ExportContext, expr: Any) -> None:
    """x / max(norm(x), eps), with F.norm's quirks: ord=±inf reduces over every axis (F.norm
    ignores `axis` there) and ord=0 counts non-zeros."""
    args = call_args(expr)
    x, axis, dtype = args["inp"], args.get("axis"), out_dtype(expr)
    order = 2 if args.get("ord") is None else float(args["ord"])
    value = cast_if_needed(ctx, ctx.value_of(x), tensor_dtype(x), dtype)
    axes = None if axis is None else [int(axis)]
    keep = axis is not None
    if math.isinf(order):
        norm = reduce_op(ctx, "ReduceMax" if order > 0 else "ReduceMin",
                         ctx.op("Abs", [value]), None, keepdims=False)
    elif order == 0:
        nonzero = ctx.op("Not", [ctx.op("Equal", [value, ctx.const(np.zeros((), dtype))])])
        norm = reduce_op(ctx, "ReduceSum", ctx.op("Cast", [nonzero], to=onnx_dtype(dtype)),
                         axes, keepdims=keep)
    elif order in (1, 2):
        norm = reduce_op(ctx, f"ReduceL{int(order)}", value, axes, keepdims=keep)
    else:
        powered = ctx.op("Pow", [ctx.op("Abs", [value]), ctx.const(np.asarray(order, dtype))])
        total = reduce_op(ctx, "ReduceSum", powered, axes, keepdims=keep)
        norm = ctx.op("Pow", [total, ctx.const(np.asarray(1.0 / order, dtype))])
    clipped = ctx.op("Max", [norm, ctx.const(np.asarray(args.get("eps", 1e-12), dtype))])
    ctx.emit("Div", [value, clipped], expr.outputs)


# ---- helpers -------------------------------------------------------------------------------
def _affine_params(norm: Any) -> NormParams:
    return NormParams(norm.weight if norm.affine else None,
                      norm.bias if norm.affine else None, eps=float(norm.eps))


def _affine_args(args: dict[str, Any]) -> NormParams:
    affine = bool(args.get("affine", True))
    return NormParams(args.get("weight") if affine else None,
                      args.get("bias") if affine else None, eps=float(args.get("eps", 1e-5)))


def _node(ctx: ExportContext, op: str, inputs: list, outputs: list | None, **attrs: Any
          ) -> Any:
    """The node's output tensor: bound to `outputs` when given, else a fresh intermediate."""
    if outputs is None:
        return ctx.op(op, inputs, **attrs)
    return ctx.emit(op, inputs, outputs, **attrs)[0]


def _standardize(ctx: ExportContext, x: Any, axes: list[int], eps: float, dtype: np.dtype,
                 outputs: list | None) -> Any:
    """(x - mean) / sqrt(mean((x - mean)^2) + eps) over `axes`."""
    centered = ctx.op("Sub", [x, reduce_op(ctx, "ReduceMean", x, axes, keepdims=True)])
    var = reduce_op(ctx, "ReduceMean", ctx.op("Mul", [centered, centered]), axes,
                    keepdims=True)
    std = ctx.op("Sqrt", [ctx.op("Add", [var, ctx.const(np.asarray(eps, dtype))])])
    return _node(ctx, "Div", [centered, std], outputs)


def _standardize_affine(ctx: ExportContext, x: Any, axes: list[int], params: NormParams,
                        shape: list[int], dtype: np.dtype, outputs: list) -> None:
    has_affine = params.weight is not None or params.bias is not None
    standardized = _standardize(ctx, x, axes, params.eps, dtype,
                                None if has_affine else outputs)
    if has_affine:
        _affine(ctx, standardized, params, shape, dtype, outputs)


def _affine(ctx: ExportContext, x: Any, params: NormParams, shape: list[int],
            dtype: np.dtype, outputs: list) -> None:
    scale = _param(ctx, params, "weight", shape, dtype)
    bias = _param(ctx, params, "bias", shape, dtype)
    if scale is not None:
        x = _node(ctx, "Mul", [x, scale], None if bias is not None else outputs)
    if bias is not None:
        ctx.emit("Add", [x, bias], outputs)


_ATTRIBUTE = {"weight": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _param(ctx: ExportContext, params: NormParams, field: str, shape: list[int],
           dtype: np.dtype, fill: float | None = None) -> Any:
    """The argument reshaped to `shape` in `dtype`: an initializer when known at export
    time, else Cast/Reshape of the runtime tensor; when None, `fill` everywhere (or None)."""
    value = getattr(params, field)
    name = f"{ctx.base_name}.{params.prefix}{_ATTRIBUTE[field]}"
    if value is None:
        return None if fill is None else ctx.const(np.full(shape, fill, dtype), name=name)
    if isinstance(value, TensorNode) and not ctx.is_known(value):
        tensor = cast_if_needed(ctx, ctx.value_of(value), tensor_dtype(value), dtype)
        return ctx.op("Reshape", [tensor, ctx.shape_const(shape)])
    array = ctx.known(value) if isinstance(value, TensorNode) else _numpy(value)
    return ctx.const(array.reshape(shape).astype(dtype), name=name)


def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)
