"""Binary arithmetic and comparisons: tensor operators (incl. reversed `8*x`, `1-x`), their
F.* counterparts, and MegEngine semantics ONNX spells differently (floor division; % that
is Python's on integers but C's fmod on floats)."""

from __future__ import annotations

from typing import Any

import megengine.functional as F
import numpy as np

from ..context import ExportContext
from . import function_converter, method_converter
from ._util import cast_if_needed, onnx_dtype, out_dtype, tensor_dtype

ARITHMETIC = {"add": "Add", "sub": "Sub", "mul": "Mul", "truediv": "Div", "pow": "Pow"}
COMPARISON = {"lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual",
              "eq": "Equal"}
LOGICAL = {"and": "And", "or": "Or", "xor": "Xor"}
BOOLEAN_OPS = {*COMPARISON.values(), *LOGICAL.values()}


def _is_node(value: Any) -> bool:
    return hasattr(value, "expr")


def megengine_promotion(dtypes: list[np.dtype]) -> np.dtype:
    """MegEngine's common type of tensors, not numpy's: a float beside an integer gives at
    least float32 (float32 x int32 -> float32, float16 x int32 -> float32; numpy says float64,
    which would put DOUBLE ops into a graph MegEngine computed in float32)."""
    floats = [d for d in dtypes if d.kind == "f"]
    if floats and len(floats) < len(dtypes):
        return np.result_type(np.float32, *floats)
    return np.result_type(*dtypes)


def compute_dtype(lhs: Any, rhs: Any, fallback: np.dtype) -> np.dtype:
    """The dtype both operands are cast to: the tensors' common type by MegEngine's rules,
    where a Python float beside an integer tensor promotes to float32."""
    dtypes = [tensor_dtype(v) for v in (lhs, rhs) if _is_node(v)]
    scalars = [v for v in (lhs, rhs) if not _is_node(v)]
    if not dtypes:
        return fallback
    common = megengine_promotion(dtypes)
    if any(isinstance(s, float) or np.asarray(s).dtype.kind == "f" for s in scalars) \
            and common.kind in "iub":
        return np.dtype(np.float32)
    return common


def operand(ctx: ExportContext, value: Any, dtype: np.dtype) -> Any:
    if _is_node(value):
        return cast_if_needed(ctx, ctx.value_of(value), tensor_dtype(value), dtype)
    return ctx.const(np.asarray(value, dtype=dtype))


def emit_binary(ctx: ExportContext, expr: Any, op: str, lhs: Any, rhs: Any) -> None:
    result = out_dtype(expr)
    dtype = compute_dtype(lhs, rhs, result)
    if result.kind == "f":
        # The traced dtype is MegEngine's own: int / int and int ** int give floats (2 ** -3
        # must not truncate to 0), and float32 x int32 stays float32.
        dtype = result
    a, b = operand(ctx, lhs, dtype), operand(ctx, rhs, dtype)
    if op in ("FloorDiv", "Mod"):
        value = _floor_div(ctx, a, b, dtype) if op == "FloorDiv" else _mod(ctx, a, b, dtype)
        return _finish(ctx, expr, value, dtype, result)
    # comparisons give bool, but M.Elemwise("lt") is recorded as float 0/1 and needs a Cast
    have = np.dtype(np.bool_) if op in BOOLEAN_OPS else dtype
    if result == have:
        ctx.emit(op, [a, b], expr.outputs)
        return None
    return _finish(ctx, expr, ctx.op(op, [a, b]), have, result)


def _finish(ctx: ExportContext, expr: Any, value: Any, have: np.dtype, want: np.dtype) -> None:
    if have == want:
        ctx.emit("Identity", [value], expr.outputs)
    else:
        ctx.emit("Cast", [value], expr.outputs, to=onnx_dtype(want))


def _floor_div(ctx: ExportContext, a: Any, b: Any, dtype: np.dtype) -> Any:
    if dtype.kind == "f":
        return ctx.op("Floor", [ctx.op("Div", [a, b])])
    # Integer Div truncates; a - (a mod b) (Python's mod, the divisor's sign) is an exact
    # multiple of b, so dividing it truncates nothing: floor division without float64.
    return ctx.op("Div", [ctx.op("Sub", [a, _mod(ctx, a, b, dtype)]), b])


def _mod(ctx: ExportContext, a: Any, b: Any, dtype: np.dtype) -> Any:
    # MegEngine's MOD follows the divisor's sign on integers (Python) but the dividend's on
    # floats (C fmod: -3.5 % 2 == -1.5), which are ONNX Mod's fmod=0 and fmod=1.
    return ctx.op("Mod", [a, b], fmod=0 if dtype.kind in "iu" else 1)


def _method(op: str, reverse: bool = False):
    def convert(ctx: ExportContext, expr: Any) -> None:
        lhs, rhs = expr.args[0], expr.args[1]
        if reverse:
            lhs, rhs = rhs, lhs
        emit_binary(ctx, expr, op, lhs, rhs)
    return convert


for _name, _op in {**ARITHMETIC, **COMPARISON, **LOGICAL,
                   "floordiv": "FloorDiv", "mod": "Mod"}.items():
    method_converter(f"__{_name}__")(_method(_op))
    if _name not in COMPARISON:
        method_converter(f"__r{_name}__")(_method(_op, reverse=True))
        method_converter(f"__i{_name}__")(_method(_op))  # `x += y` traces as __iadd__


@method_converter("__ne__")
@function_converter(F.not_equal)
def not_equal(ctx: ExportContext, expr: Any) -> None:
    lhs, rhs = expr.args[0], expr.args[1]
    dtype = compute_dtype(lhs, rhs, np.dtype(np.float32))
    equal = ctx.op("Equal", [operand(ctx, lhs, dtype), operand(ctx, rhs, dtype)])
    ctx.emit("Not", [equal], expr.outputs)


def _function(op: str):
    def convert(ctx: ExportContext, expr: Any) -> None:
        emit_binary(ctx, expr, op, expr.args[0], expr.args[1])
    return convert


for _func, _op in {F.add: "Add", F.sub: "Sub", F.mul: "Mul", F.div: "Div", F.pow: "Pow",
                   F.floor_div: "FloorDiv", F.mod: "Mod", F.maximum: "Max",
                   F.minimum: "Min", F.less: "Less", F.less_equal: "LessOrEqual",
                   F.greater: "Greater", F.greater_equal: "GreaterOrEqual", F.equal: "Equal",
                   F.logical_and: "And", F.logical_or: "Or", F.logical_xor: "Xor"}.items():
    function_converter(_func)(_function(_op))
