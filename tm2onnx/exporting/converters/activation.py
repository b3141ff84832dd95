"""Activations and unary math: M.ReLU/M.PReLU/... modules, F.relu/F.round/... functions, unary
tensor operators and M.Elemwise by its mode string. Where MegEngine differs from the obvious ONNX
op (round half away from zero, exact-erf GELU) the MegEngine form is built."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import megengine.functional as F
import megengine.module as M
import numpy as np

from ...errors import ConversionError
from ..context import ExportContext
from . import function_converter, method_converter, module_converter
from ._util import call_args, cast_if_needed, onnx_dtype, tensor_dtype
from .elementwise import emit_binary

# (ctx, ONNX inputs already in the output dtype, TensorNodes to bind) -> None
Emitter = Callable[[ExportContext, list, list], None]


def _dtype(outputs: list) -> np.dtype:
    return np.dtype(outputs[0].dtype)


def _scalar(ctx: ExportContext, value: float, outputs: list) -> Any:
    return ctx.const(np.asarray(value, dtype=_dtype(outputs)))


def _simple(op: str, **attrs: Any) -> Emitter:
    def emit(ctx: ExportContext, xs: list, outputs: list) -> None:
        ctx.emit(op, xs, outputs, **attrs)
    return emit


def _float_only(op: str) -> Emitter:
    """MegEngine's floor/ceil of an integer tensor is the identity; ONNX's are float-only."""
    def emit(ctx: ExportContext, xs: list, outputs: list) -> None:
        ctx.emit(op if _dtype(outputs).kind == "f" else "Identity", xs, outputs)
    return emit


def _relu(ctx: ExportContext, xs: list, outputs: list) -> None:
    if _dtype(outputs).kind == "f":
        ctx.emit("Relu", xs, outputs)
    else:  # ONNX Relu takes integers only from opset 14
        ctx.emit("Max", [xs[0], _scalar(ctx, 0, outputs)], outputs)


def _relu6(ctx: ExportContext, xs: list, outputs: list) -> None:
    ctx.emit("Clip", [xs[0], _scalar(ctx, 0, outputs), _scalar(ctx, 6, outputs)], outputs)


def _hswish(ctx: ExportContext, xs: list, outputs: list) -> None:
    if ctx.opset >= 14:
        ctx.emit("HardSwish", xs, outputs)
    else:
        ctx.emit("Mul", [xs[0], ctx.op("HardSigmoid", xs, alpha=1 / 6, beta=0.5)], outputs)


def _silu(ctx: ExportContext, xs: list, outputs: list) -> None:
    ctx.emit("Mul", [xs[0], ctx.op("Sigmoid", xs)], outputs)


def _gelu(ctx: ExportContext, xs: list, outputs: list) -> None:
    """x * Phi(x) with the exact erf, as MegEngine computes it (not the tanh approximation)."""
    if ctx.opset >= 20:
        ctx.emit("Gelu", xs, outputs, approximate="none")
        return
    erf = ctx.op("Erf", [ctx.op("Mul", [xs[0], _scalar(ctx, 1 / math.sqrt(2), outputs)])])
    half_x = ctx.op("Mul", [xs[0], _scalar(ctx, 0.5, outputs)])
    ctx.emit("Mul", [half_x, ctx.op("Add", [erf, _scalar(ctx, 1, outputs)])], outputs)


def _round(ctx: ExportContext, xs: list, outputs: list) -> None:
    """Halves away from zero (ONNX Round goes to even): sign(x) * (floor|x| + (frac >= 0.5)).
    Exact for every float, unlike floor(|x| + 0.5): 0.49999997 + 0.5 rounds up to 1 and odd
    integers above 2**23 plus 0.5 tie to the even neighbour."""
    dtype = _dtype(outputs)
    if dtype.kind != "f":
        ctx.emit("Identity", xs, outputs)
        return
    magnitude = ctx.op("Abs", xs)
    whole = ctx.op("Floor", [magnitude])
    half_up = ctx.op("GreaterOrEqual", [ctx.op("Sub", [magnitude, whole]),
                                        _scalar(ctx, 0.5, outputs)])
    rounded = ctx.op("Add", [whole, ctx.op("Cast", [half_up], to=onnx_dtype(dtype))])
    ctx.emit("Mul", [ctx.op("Sign", xs), rounded], outputs)


def _square(ctx: ExportContext, xs: list, outputs: list) -> None:
    ctx.emit("Mul", [xs[0], xs[0]], outputs)


def _expm1(ctx: ExportContext, xs: list, outputs: list) -> None:
    ctx.emit("Sub", [ctx.op("Exp", xs), _scalar(ctx, 1, outputs)], outputs)


def _log1p(ctx: ExportContext, xs: list, outputs: list) -> None:
    ctx.emit("Log", [ctx.op("Add", [xs[0], _scalar(ctx, 1, outputs)])], outputs)


def _logsigmoid(ctx: ExportContext, xs: list, outputs: list) -> None:
    ctx.emit("Neg", [ctx.op("Softplus", [ctx.op("Neg", xs)])], outputs)


# Keyed by MegEngine's Elemwise mode names, so F.*, tensor methods and M.Elemwise share them.
UNARY: dict[str, Emitter] = {
    "relu": _relu, "relu6": _relu6, "sigmoid": _simple("Sigmoid"), "silu": _silu,
    "hsigmoid": _simple("HardSigmoid", alpha=1 / 6, beta=0.5), "h_swish": _hswish,
    "gelu": _gelu, "softplus": _simple("Softplus"), "logsigmoid": _logsigmoid,
    "negate": _simple("Neg"), "floor": _float_only("Floor"), "ceil": _float_only("Ceil"),
    "round": _round, "square": _square, "expm1": _expm1, "log1p": _log1p,
    **{mode: _simple(op) for mode, op in {
        "tanh": "Tanh", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "sin": "Sin", "cos": "Cos",
        "tan": "Tan", "asin": "Asin", "acos": "Acos", "sinh": "Sinh", "cosh": "Cosh",
        "asinh": "Asinh", "acosh": "Acosh", "atanh": "Atanh", "erf": "Erf", "abs": "Abs",
        "sign": "Sign", "not": "Not"}.items()},
}
FUSE_ADD = {"fuse_add_relu": "relu", "fuse_add_sigmoid": "sigmoid", "fuse_add_tanh": "tanh",
            "fuse_add_h_swish": "h_swish"}
BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "true_div": "Div", "floor_div": "FloorDiv",
          "mod": "Mod", "pow": "Pow", "max": "Max", "min": "Min", "lt": "Less",
          "leq": "LessOrEqual", "eq": "Equal", "and": "And", "or": "Or", "xor": "Xor"}


def cast_inputs(ctx: ExportContext, values: list, outputs: list) -> list:
    """ONNX tensors for the operands in the output dtype (F.exp of int32 is float32); ops
    giving bool (not) keep their inputs as they are."""
    dtype = _dtype(outputs)
    tensors = []
    for value in values:
        if not hasattr(value, "expr"):
            tensors.append(ctx.const(np.asarray(value, dtype=dtype)))
        elif dtype == np.bool_:
            tensors.append(ctx.value_of(value))
        else:
            tensors.append(cast_if_needed(ctx, ctx.value_of(value), tensor_dtype(value), dtype))
    return tensors


def emit_unary(ctx: ExportContext, mode: str, value: Any, outputs: list) -> None:
    UNARY[mode](ctx, cast_inputs(ctx, [value], outputs), outputs)


def _identity(ctx: ExportContext, value: Any, outputs: list) -> None:
    ctx.emit("Identity", [ctx.value_of(value)], outputs)


def _unary_function(mode: str) -> Callable[[ExportContext, Any], None]:
    def convert(ctx: ExportContext, expr: Any) -> None:
        emit_unary(ctx, mode, expr.args[0], expr.outputs)
    return convert


def _unary_module(mode: str) -> Callable[[ExportContext, Any, Any], None]:
    def convert(ctx: ExportContext, expr: Any, module: Any) -> None:
        emit_unary(ctx, mode, expr.args[1], expr.outputs)
    return convert


for _func, _mode in {
        F.relu: "relu", F.relu6: "relu6", F.sigmoid: "sigmoid", F.hsigmoid: "hsigmoid",
        F.hswish: "h_swish", F.silu: "silu", F.gelu: "gelu", F.softplus: "softplus",
        F.logsigmoid: "logsigmoid", F.tanh: "tanh", F.exp: "exp", F.expm1: "expm1",
        F.log: "log", F.log1p: "log1p", F.sqrt: "sqrt", F.square: "square", F.abs: "abs",
        F.neg: "negate", F.floor: "floor", F.ceil: "ceil", F.round: "round", F.sin: "sin",
        F.cos: "cos", F.tan: "tan", F.asin: "asin", F.acos: "acos", F.sinh: "sinh",
        F.cosh: "cosh", F.asinh: "asinh", F.acosh: "acosh", F.atanh: "atanh",
        F.logical_not: "not", F.sign: "sign"}.items():
    function_converter(_func)(_unary_function(_mode))
for _name, _mode in {"__neg__": "negate", "__abs__": "abs", "__invert__": "not",
                     "__round__": "round", "__floor__": "floor", "__ceil__": "ceil"}.items():
    method_converter(_name)(_unary_function(_mode))
for _cls, _mode in {M.ReLU: "relu", M.Sigmoid: "sigmoid", M.SiLU: "silu", M.GELU: "gelu"}.items():
    module_converter(_cls)(_unary_module(_mode))


@method_converter("__pos__")
def positive(ctx: ExportContext, expr: Any) -> None:
    _identity(ctx, expr.args[0], expr.outputs)


@function_converter(F.copy)
def copy(ctx: ExportContext, expr: Any) -> None:
    _identity(ctx, call_args(expr)["inp"], expr.outputs)  # the device argument means nothing here


# float M.QuantStub/DequantStub are identities until quantize_qat replaces them (their qat.
# subclasses override forward with fake quantization, and are refused through the MRO rule)
@module_converter(M.Identity, M.QuantStub, M.DequantStub)
def identity_module(ctx: ExportContext, expr: Any, module: Any) -> None:
    _identity(ctx, expr.args[1], expr.outputs)


def _no_training(ctx: ExportContext, what: str, drop_prob: float, training: bool) -> None:
    if training and drop_prob > 0:
        raise ConversionError(f"{ctx.module_path or ctx.base_name}: {what} in training mode "
                              f"(drop_prob={drop_prob}) drops at random", where=ctx.source,
                              hint="trace in eval mode, or pass training=self.training")


@function_converter(F.dropout)
def dropout(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    _no_training(ctx, "F.dropout", args["drop_prob"], args["training"])
    _identity(ctx, args["inp"], expr.outputs)


@module_converter(M.Dropout)
def dropout_module(ctx: ExportContext, expr: Any, module: Any) -> None:
    _no_training(ctx, "M.Dropout", module.drop_prob, module.training)
    _identity(ctx, expr.args[1], expr.outputs)


@module_converter(M.LeakyReLU)
def leaky_relu_module(ctx: ExportContext, expr: Any, module: Any) -> None:
    [x] = cast_inputs(ctx, [expr.args[1]], expr.outputs)
    ctx.emit("LeakyRelu", [x], expr.outputs, alpha=float(module.negative_slope))


@function_converter(F.leaky_relu)
def leaky_relu(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    [x] = cast_inputs(ctx, [args["inp"]], expr.outputs)
    ctx.emit("LeakyRelu", [x], expr.outputs, alpha=float(args["negative_slope"]))


def emit_prelu(ctx: ExportContext, x_node: Any, slope: Any, outputs: list) -> None:
    """PRelu broadcasts the slope (an ONNX tensor) to x only; a slope that grows x's shape
    needs the long form max(x, 0) + slope * min(x, 0)."""
    [x] = cast_inputs(ctx, [x_node], outputs)
    if tuple(outputs[0].shape) == tuple(x_node.shape):
        ctx.emit("PRelu", [x, slope], outputs)
        return
    zero = _scalar(ctx, 0, outputs)
    negative = ctx.op("Mul", [slope, ctx.op("Min", [x, zero])])
    ctx.emit("Add", [ctx.op("Max", [x, zero]), negative], outputs)


@module_converter(M.PReLU)
def prelu_module(ctx: ExportContext, expr: Any, module: Any) -> None:
    emit_prelu(ctx, expr.args[1], ctx.param("weight", module.weight.numpy()), expr.outputs)


@function_converter(F.nn.prelu)
def prelu(ctx: ExportContext, expr: Any) -> None:
    x, slope = expr.args[0], expr.args[1]
    emit_prelu(ctx, x, cast_inputs(ctx, [slope], expr.outputs)[0], expr.outputs)


@function_converter(F.clip)
def clip(ctx: ExportContext, expr: Any) -> None:
    """MegEngine clips as `x < lower ? lower : min(x, upper)`: the same as Clip only for scalar
    bounds with lower <= upper (Clip gives `upper` everywhere otherwise)."""
    args = call_args(expr)
    emit_clip(ctx, args["x"], args["lower"], args["upper"], expr.outputs)


def emit_clip(ctx: ExportContext, x_node: Any, lower: Any, upper: Any, outputs: list) -> None:
    lower, upper = (float(ctx.known(b)) if hasattr(b, "expr") and ctx.is_known(b) and
                    ctx.known(b).size == 1 else b for b in (lower, upper))
    [x] = cast_inputs(ctx, [x_node], outputs)
    if not any(hasattr(b, "expr") for b in (lower, upper)) and (
            lower is None or upper is None or lower <= upper):
        limits = ["" if b is None else _scalar(ctx, b, outputs) for b in (lower, upper)]
        ctx.emit("Clip", [x, *limits], outputs)
    elif upper is None:
        ctx.emit("Max", [x, *cast_inputs(ctx, [lower], outputs)], outputs)
    elif lower is None:
        ctx.emit("Min", [x, *cast_inputs(ctx, [upper], outputs)], outputs)
    else:
        low, high = cast_inputs(ctx, [lower, upper], outputs)
        ctx.emit("Where", [ctx.op("Less", [x, low]), low, ctx.op("Min", [x, high])], outputs)


@function_converter(F.where)
def where(ctx: ExportContext, expr: Any) -> None:
    args = call_args(expr)
    values = cast_inputs(ctx, [args["x"], args["y"]], expr.outputs)
    ctx.emit("Where", [ctx.value_of(args["mask"]), *values], expr.outputs)


def _fused(ctx: ExportContext, mode: str, xs: list, outputs: list) -> None:
    if mode in FUSE_ADD:
        UNARY[FUSE_ADD[mode]](ctx, [ctx.op("Add", xs)], outputs)
    elif mode == "fuse_mul_add3":
        ctx.emit("Add", [ctx.op("Mul", xs[:2]), xs[2]], outputs)
    else:  # fuse_mul_add4
        ctx.emit("Add", [ctx.op("Mul", xs[:2]), ctx.op("Mul", xs[2:])], outputs)


@module_converter(M.Elemwise)
def elemwise_module(ctx: ExportContext, expr: Any, module: Any) -> None:
    emit_elemwise(ctx, expr, str(module.method), list(expr.args[1:]))


def emit_elemwise(ctx: ExportContext, expr: Any, mode: str, operands: list) -> None:
    """One MegEngine Elemwise mode ("add" or Elemwise.Mode.ADD) on its operands: M.Elemwise
    and raw apply(Elemwise) exprs share it."""
    mode = mode.rsplit(".", 1)[-1].lower()
    if mode == "clip":
        emit_clip(ctx, *operands, expr.outputs)
    elif mode in BINARY:
        emit_binary(ctx, expr, BINARY[mode], *operands)
    elif mode == "prelu":
        emit_prelu(ctx, operands[0], cast_inputs(ctx, operands[1:], expr.outputs)[0], expr.outputs)
    elif mode in UNARY:
        emit_unary(ctx, mode, operands[0], expr.outputs)
    elif mode in FUSE_ADD or mode in ("fuse_mul_add3", "fuse_mul_add4"):
        _fused(ctx, mode, cast_inputs(ctx, operands, expr.outputs), expr.outputs)
    else:
        known = sorted([*UNARY, *FUSE_ADD, *BINARY, "prelu", "fuse_mul_add3", "fuse_mul_add4"])
        raise ConversionError(f"{ctx.base_name}: Elemwise mode {mode!r} has no ONNX form "
                              "in tm2onnx", where=ctx.source,
                              hint=f"use one of {', '.join(known)}")
