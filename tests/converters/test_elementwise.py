"""Binary arithmetic, comparison and logical converters against MegEngine: scalars of both
kinds on either side, broadcasting, in-place operators, int32 tensors, and MegEngine's own
floor division and % on negative values."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.harness import export_and_compare, function_net

X = (2, 3, 4)
ROW = (1, 1, 4)
# Divisors and exponents kept away from zero so both runtimes see the same finite values.
POSITIVE = np.random.default_rng(3).uniform(0.5, 2.0, size=X).astype(np.float32)
SIGNED_DIVISOR = np.array([[-2.0, -0.75, 1.5, 3.0]], dtype=np.float32)
DIVIDEND = np.array([[-7.0, -3.5, 3.5, 7.0], [-1.0, -0.5, 0.25, 5.0]], dtype=np.float32)
INTS = np.array([[-7, -3, 0, 3, 7], [5, -5, 2, -2, 9]], dtype=np.int32)
INT_DIVISOR = np.array([[2, -2, 3, -3, 4]], dtype=np.int32)
SMALL_INTS = np.array([[-3, -1, 0, 1, 2], [3, 1, -2, 2, 0]], dtype=np.int32)
MASK_A = np.array([[True, True, False, False]], dtype=np.bool_)
MASK_B = np.array([[True, False, True, False]], dtype=np.bool_)

ARITHMETIC = [
    pytest.param(lambda F, x, y: x + y, [X, X], ["Add"], id="add"),
    pytest.param(lambda F, x, y: x - y, [X, ROW], ["Sub"], id="sub-broadcast"),
    pytest.param(lambda F, x, y: x * y, [ROW, X], ["Mul"], id="mul-broadcast-lhs"),
    pytest.param(lambda F, x, y: x / y, [X, POSITIVE], ["Div"], id="truediv"),
    pytest.param(lambda F, x: x + 2, [X], ["Add"], id="add-int-scalar"),
    pytest.param(lambda F, x: x - 0.5, [X], ["Sub"], id="sub-float-scalar"),
    pytest.param(lambda F, x: 8 * x, [X], ["Mul"], id="rmul"),
    pytest.param(lambda F, x: 1 - x, [X], ["Sub"], id="rsub"),
    pytest.param(lambda F, x: 2.5 + x, [X], ["Add"], id="radd"),
    pytest.param(lambda F, x: 2 / x, [POSITIVE], ["Div"], id="rtruediv"),
    pytest.param(lambda F, x: x ** 2, [X], ["Pow"], id="pow-int-scalar"),
    pytest.param(lambda F, x: x ** 0.5, [POSITIVE], ["Pow"], id="pow-float-scalar"),
    pytest.param(lambda F, x: 2 ** x, [X], ["Pow"], id="rpow"),
    pytest.param(lambda F, x, y: x ** y, [POSITIVE, ROW], ["Pow"], id="pow-broadcast"),
    pytest.param(lambda F, x, y: F.pow(x, y), [POSITIVE, X], ["Pow"], id="F.pow"),
    pytest.param(lambda F, x, y: F.add(x, y), [X, ROW], ["Add"], id="F.add"),
    pytest.param(lambda F, x, y: F.sub(x, y), [X, ROW], ["Sub"], id="F.sub"),
    pytest.param(lambda F, x, y: F.mul(x, y), [X, ROW], ["Mul"], id="F.mul"),
    pytest.param(lambda F, x, y: F.div(x, y), [X, POSITIVE], ["Div"], id="F.div"),
    pytest.param(lambda F, x, y: F.maximum(x, y), [X, ROW], ["Max"], id="F.maximum"),
    pytest.param(lambda F, x, y: F.minimum(x, y), [ROW, X], ["Min"], id="F.minimum"),
    pytest.param(lambda F, x: F.maximum(x, 0.5), [X], ["Max"], id="F.maximum-scalar"),
    pytest.param(lambda F, x: F.minimum(1, x), [X], ["Min"], id="F.minimum-scalar-lhs"),
]

DIVISION = [  # floats: // floors, % is C fmod (dividend's sign); ints: both follow Python
    pytest.param(lambda F, x, y: x // y, [DIVIDEND, SIGNED_DIVISOR], ["Floor"],
                 id="floordiv-float-negative"),
    pytest.param(lambda F, x, y: x % y, [DIVIDEND, SIGNED_DIVISOR], ["Mod"],
                 id="mod-float-negative"),
    pytest.param(lambda F, x, y: F.floor_div(x, y), [DIVIDEND, SIGNED_DIVISOR], ["Floor"],
                 id="F.floor_div-float"),
    pytest.param(lambda F, x, y: F.mod(x, y), [DIVIDEND, SIGNED_DIVISOR], ["Mod"],
                 id="F.mod-float"),
    pytest.param(lambda F, x: x % 2.5, [DIVIDEND], ["Mod"], id="mod-float-scalar"),
    pytest.param(lambda F, x: 3 // x, [SIGNED_DIVISOR], ["Floor"], id="rfloordiv"),
    pytest.param(lambda F, x: 5.5 % x, [SIGNED_DIVISOR], ["Mod"], id="rmod"),
    pytest.param(lambda F, x, y: x // y, [INTS, INT_DIVISOR], ["Mod", "Div"],
                 id="floordiv-int-negative"),
    pytest.param(lambda F, x, y: x % y, [INTS, INT_DIVISOR], ["Mod"], id="mod-int-negative"),
    pytest.param(lambda F, x, y: F.floor_div(x, y), [INTS, INT_DIVISOR], ["Mod", "Div"],
                 id="F.floor_div-int"),
    pytest.param(lambda F, x, y: F.mod(x, y), [INTS, INT_DIVISOR], ["Mod"], id="F.mod-int"),
    pytest.param(lambda F, x: x % -3, [INTS], ["Mod"], id="mod-int-negative-scalar"),
    pytest.param(lambda F, x: x // 2.5, [INTS], ["Floor"], id="floordiv-int-by-float"),
]

INTEGER = [  # int32 stays int32 except where MegEngine promotes (/, **, float scalars)
    pytest.param(lambda F, x, y: x + y, [INTS, INT_DIVISOR], ["Add"], id="int-add"),
    pytest.param(lambda F, x: x * 3 - 1, [INTS], ["Mul", "Sub"], id="int-scalars"),
    pytest.param(lambda F, x: x * 2.5, [INTS], ["Mul"], id="int-times-float"),
    pytest.param(lambda F, x, y: x / y, [INTS, INT_DIVISOR], ["Div"], id="int-truediv"),
    pytest.param(lambda F, x: x ** 2, [SMALL_INTS], ["Pow"], id="int-pow"),
    pytest.param(lambda F, x: 2 ** x, [SMALL_INTS], ["Pow"], id="int-rpow-negative-exp"),
    pytest.param(lambda F, x, y: F.maximum(x, y), [INTS, INT_DIVISOR], ["Max"], id="int-max"),
    pytest.param(lambda F, x, y: x - y, [INTS, np.ones((1, 5), np.float32)], ["Sub"],
                 id="int-minus-float-tensor"),
]

COMPARISON = [  # all give bool outputs
    pytest.param(lambda F, x, y: x < y, [X, ROW], ["Less"], id="lt"),
    pytest.param(lambda F, x, y: x <= y, [X, X], ["LessOrEqual"], id="le"),
    pytest.param(lambda F, x: x > 0, [X], ["Greater"], id="gt-scalar"),
    pytest.param(lambda F, x: x >= 0.5, [X], ["GreaterOrEqual"], id="ge-scalar"),
    pytest.param(lambda F, x: 0.5 < x, [X], ["Greater"], id="reflected-lt"),
    pytest.param(lambda F, x: x == 3, [INTS], ["Equal"], id="eq-int"),
    pytest.param(lambda F, x: x != 3, [INTS], ["Equal", "Not"], id="ne-int"),
    pytest.param(lambda F, x: x < 2.5, [INTS], ["Less"], id="lt-int-float-scalar"),
    pytest.param(lambda F, x, y: x == y, [INTS, INT_DIVISOR], ["Equal"], id="eq-broadcast"),
    pytest.param(lambda F, x, y: F.less(x, y), [X, ROW], ["Less"], id="F.less"),
    pytest.param(lambda F, x, y: F.less_equal(x, y), [X, ROW], ["LessOrEqual"],
                 id="F.less_equal"),
    pytest.param(lambda F, x, y: F.greater(x, y), [X, ROW], ["Greater"], id="F.greater"),
    pytest.param(lambda F, x, y: F.greater_equal(x, y), [X, ROW], ["GreaterOrEqual"],
                 id="F.greater_equal"),
    pytest.param(lambda F, x, y: F.equal(x, y), [INTS, INT_DIVISOR], ["Equal"], id="F.equal"),
    pytest.param(lambda F, x, y: F.not_equal(x, y), [INTS, INT_DIVISOR], ["Not"],
                 id="F.not_equal"),
]

LOGICAL = [  # on bool tensors; MegEngine has no bitwise and/or/xor for ints
    pytest.param(lambda F, a, b: a & b, [MASK_A, MASK_B], ["And"], id="and"),
    pytest.param(lambda F, a, b: a | b, [MASK_A, MASK_B], ["Or"], id="or"),
    pytest.param(lambda F, a, b: a ^ b, [MASK_A, MASK_B], ["Xor"], id="xor"),
    pytest.param(lambda F, x, y: (x > 0) & (y < 0), [X, X], ["And"], id="and-of-comparisons"),
    pytest.param(lambda F, a, b: F.logical_and(a, b), [MASK_A, MASK_B], ["And"],
                 id="F.logical_and"),
    pytest.param(lambda F, a, b: F.logical_or(a, b), [MASK_A, MASK_B], ["Or"],
                 id="F.logical_or"),
    pytest.param(lambda F, a, b: F.logical_xor(a, b), [MASK_A, MASK_B], ["Xor"],
                 id="F.logical_xor"),
]


def _in_place(F, x, y):
    z = x * 1
    z += y
    z *= 2
    z -= 1
    z /= 4
    return z


IN_PLACE = [
    pytest.param(_in_place, [X, ROW], ["Add", "Mul", "Sub", "Div"], id="in-place"),
]


@pytest.mark.parametrize("fn, inputs, ops",
                         ARITHMETIC + DIVISION + INTEGER + COMPARISON + LOGICAL + IN_PLACE)
def test_elementwise(megengine, fn, inputs, ops):
    model = export_and_compare(lambda: function_net(fn), inputs, expect_ops=ops)
    assert len(model.graph.output) >= 1
