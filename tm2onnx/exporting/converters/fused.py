"""The fused module family (ConvBn2d, ConvBnRelu2d, ConvRelu2d, their ConvTranspose forms,
LinearRelu, LinearBn1d, LinearBnRelu1d) as the unfused node chain, BN eps kept. ConvRelu2d
and LinearRelu subclass Conv2d/Linear, so without these the MRO lookup would drop the Relu."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import megengine.module as M

from ..context import ExportContext
from . import module_converter
from ._util import cast_if_needed, out_dtype, tensor_dtype
from .conv import emit_conv_module
from .linear import emit_linear, linear_arrays
from .norm import bn_params, emit_batch_norm

Step = Callable[[ExportContext, Any, list], None]  # (ctx, input tensor, outputs)


@dataclass(frozen=True, eq=False)
class _Hidden:
    """Stands in for a TensorNode between two steps: ctx.emit names, types and binds it like
    an expr output, and ctx.value_of(hidden) then gives the tensor."""

    name: str
    dtype: Any
    shape: Any = None


def _chain(ctx: ExportContext, expr: Any, steps: list[tuple[str, Step]]) -> None:
    """Run the steps in order; each but the last writes a tensor named `<module>/<step>`.
    The input is cast to the output dtype first: the weights are stored in that dtype."""
    x = expr.inputs[1]
    value = cast_if_needed(ctx, ctx.value_of(x), tensor_dtype(x), out_dtype(expr))
    for index, (label, step) in enumerate(steps):
        if index == len(steps) - 1:
            step(ctx, value, expr.outputs)
            return
        hidden = _Hidden(f"{ctx.base_name}/{label}", out_dtype(expr))
        step(ctx, value, [hidden])
        value = ctx.value_of(hidden)


def _conv_step(conv: Any, prefix: str, *, transpose: bool) -> Step:
    def step(ctx: ExportContext, x: Any, outputs: list) -> None:
        emit_conv_module(ctx, conv, x, outputs, spatial=2, transpose=transpose, prefix=prefix)
    return step


def _linear_step(linear: Any, prefix: str, rank: int) -> Step:
    def step(ctx: ExportContext, x: Any, outputs: list) -> None:
        weight, bias = linear_arrays(linear)
        emit_linear(ctx, x, rank, weight, bias, outputs, dtype=out_dtype(ctx.expr),
                    prefix=prefix)
    return step


def _bn_step(bn: Any, rank: int) -> Step:
    def step(ctx: ExportContext, x: Any, outputs: list) -> None:
        emit_batch_norm(ctx, x, outputs, bn_params(bn, "bn."), channels=int(bn.num_features),
                        rank=rank, dtype=out_dtype(ctx.expr))
    return step


def _relu_step(ctx: ExportContext, x: Any, outputs: list) -> None:
    ctx.emit("Relu", [x], outputs)


@module_converter(M.ConvBn2d, M.ConvBnRelu2d)
def conv_bn(ctx: ExportContext, expr: Any, module: Any) -> None:
    steps = [("conv", _conv_step(module.conv, "conv.", transpose=False)),
             ("bn", _bn_step(module.bn, 4))]
    _chain(ctx, expr, steps + ([("relu", _relu_step)]
                               if isinstance(module, M.ConvBnRelu2d) else []))


@module_converter(M.ConvTransposeBn2d, M.ConvTransposeBnRelu2d)
def conv_transpose_bn(ctx: ExportContext, expr: Any, module: Any) -> None:
    steps = [("conv", _conv_step(module.conv_transpose2d, "conv_transpose2d.", transpose=True)),
             ("bn", _bn_step(module.bn, 4))]
    _chain(ctx, expr, steps + ([("relu", _relu_step)]
                               if isinstance(module, M.ConvTransposeBnRelu2d) else []))


@module_converter(M.ConvRelu2d)
def conv_relu(ctx: ExportContext, expr: Any, module: Any) -> None:
    _chain(ctx, expr, [("conv", _conv_step(module, "", transpose=False)),
                       ("relu", _relu_step)])


@module_converter(M.ConvTransposeRelu2d)
def conv_transpose_relu(ctx: ExportContext, expr: Any, module: Any) -> None:
    _chain(ctx, expr, [("conv", _conv_step(module, "", transpose=True)), ("relu", _relu_step)])


@module_converter(M.LinearRelu)
def linear_relu(ctx: ExportContext, expr: Any, module: Any) -> None:
    rank = len(expr.inputs[1].shape)
    _chain(ctx, expr, [("linear", _linear_step(module, "", rank)), ("relu", _relu_step)])


@module_converter(M.LinearBn1d, M.LinearBnRelu1d)
def linear_bn(ctx: ExportContext, expr: Any, module: Any) -> None:
    rank = len(expr.inputs[1].shape)
    steps = [("linear", _linear_step(module.linear, "linear.", rank)),
             ("bn", _bn_step(module.bn, rank))]
    _chain(ctx, expr, steps + ([("relu", _relu_step)]
                               if isinstance(module, M.LinearBnRelu1d) else []))
