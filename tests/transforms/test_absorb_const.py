"""absorb-const: constant Mul/Div/Add/Sub after Conv/ConvTranspose/Gemm/MatMul fold into the
weight and bias without changing outputs; non-affine or unsafe cases are refused untouched."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.helpers import FP32, assert_same_function, init_text, ops, parse_model
from tm2onnx.transforms import run_pipeline

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'


def model_from(rng: np.random.Generator, signature: str, body: str,
               consts: dict[str, tuple]) -> onnx.ModelProto:
    """parse_model text whose initializers are seeded random arrays of the given shapes."""
    inits = ", ".join(init_text(name, rng.uniform(0.5, 2, shape).astype(np.float32))
                      for name, shape in consts.items())
    return parse_model(f"{HEADER}\n g {signature} <{inits}> {{ {body} }}")


def absorb(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str], list[tuple[str, str]]]:
    out, [report] = run_pipeline(model, ["absorb-const"])
    return out, report.rewritten, report.skipped


def test_guide_example_conv_times_8_over_128(rng):
    model = model_from(rng, "(float[1,3,8,8] x) => (float[1,16,8,8] y)", """
        t = Conv (x, w, b)
        u = Mul (t, eight)
        y = Div (u, d)""", {"w": (16, 3, 1, 1), "b": (16,), "eight": (), "d": ()})
    out, rewritten, skipped = absorb(model)
    assert ops(out) == ["Conv"] and len(rewritten) == 2 and not skipped
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_function(model, out, **FP32)


CONV_CASES = [
    pytest.param("u = Mul (c, t)\n y = Add (u, a)", {"c": (1, 8, 1, 1), "a": (8, 1, 1)},
                 "", id="cmul-add-creates-bias"),
    pytest.param("u = Sub (t, c)\n y = Div (u, a)", {"c": (8, 1, 1), "a": (1,)}, ", b",
                 id="sub-div-bias"),
    pytest.param("y = Sub (c, t)", {"c": (1, 8, 1, 1)}, ", b", id="c-minus-x"),
]


@pytest.mark.parametrize("body, consts, bias", CONV_CASES)
@pytest.mark.parametrize("op, group, wshape", [
    pytest.param("Conv", 1, (8, 4, 3, 3), id="conv-g1"),
    pytest.param("Conv", 4, (8, 1, 3, 3), id="conv-g4"),
    pytest.param("ConvTranspose", 2, (4, 4, 3, 3), id="deconv-g2"),
])
def test_folds_after_convolutions(rng, op, group, wshape, body, consts, bias):
    model = model_from(rng, "(float[2,4,5,5] x) => (float[2,8,5,5] y)",
                       f"t = {op} <group={group}, pads=[1,1,1,1]> (x, w{bias})\n{body}",
                       {"w": wshape, "b": (8,), **consts})
    out, rewritten, skipped = absorb(model)
    assert ops(out) == [op] and len(rewritten) == body.count("=") and not skipped
    assert_same_function(model, out, **FP32)


def test_folds_into_gemm_transb(rng):
    model = model_from(rng, "(float[3,5] x) => (float[3,6] y)", """
        t = Gemm <transB=1, beta=0.5> (x, w, b)
        u = Mul (t, c)
        y = Add (a, u)""", {"w": (6, 5), "b": (6,), "c": (6,), "a": (1, 6)})
    out, rewritten, _ = absorb(model)
    assert ops(out) == ["Gemm"] and len(rewritten) == 2
    assert_same_function(model, out, **FP32)


def test_matmul_2d_add_becomes_gemm(rng):
    model = model_from(rng, "(float[3,5] x) => (float[3,6] y)", """
        t = MatMul (x, w)
        u = Div (t, c)
        y = Add (u, a)""", {"w": (5, 6), "c": (6,), "a": (6,)})
    out, rewritten, _ = absorb(model)
    assert ops(out) == ["Gemm"] and len(rewritten) == 2
    assert_same_function(model, out, **FP32)


def test_matmul_3d_takes_scale_but_refuses_bias(rng):
    model = model_from(rng, "(float[2,3,5] x) => (float[2,3,6] y)", """
        t = MatMul (x, w)
        u = Mul (t, c)
        y = Add (u, a)""", {"w": (5, 6), "c": (6,), "a": (6,)})
    out, rewritten, skipped = absorb(model)
    assert ops(out) == ["MatMul", "Add"] and len(rewritten) == 1
    assert skipped[0][1] == "a bias on a MatMul needs a 2-D output (to become Gemm)"
    assert_same_function(model, out, **FP32)


REFUSALS = [
    pytest.param("y = Div (c, t)", {"c": ()}, "c / x is not linear in x", id="c-over-x"),
    pytest.param("y = Mul (t, c)", {"c": (1, 1, 5, 5)},
                 "constant shape (1, 1, 5, 5) is not per output channel (8)", id="spatial"),
    pytest.param("u = Mul (t, c)\n y = Add (u, t)", {"c": ()}, "t has other consumers",
                 id="shared-intermediate"),
    pytest.param("u = Conv <pads=[1,1,1,1]> (x, w)\n v = Mul (t, c)\n y = Add (u, v)",
                 {"c": ()}, "weight w is shared with another node", id="shared-initializer"),
]


@pytest.mark.parametrize("body, consts, reason", REFUSALS)
def test_refuses_and_leaves_model_unchanged(rng, body, consts, reason):
    model = model_from(rng, "(float[2,4,5,5] x) => (float[2,8,5,5] y)",
                       f"t = Conv <pads=[1,1,1,1]> (x, w)\n{body}", {"w": (8, 4, 3, 3), **consts})
    before = model.SerializeToString()
    out, rewritten, skipped = absorb(model)
    assert not rewritten and [why for _, why in skipped] == [reason]
    assert out.SerializeToString() == before


def test_refuses_weight_given_as_graph_input(rng):
    model = model_from(rng, "(float[2,4,5,5] x, float[8,4,1,1] w) => (float[2,8,5,5] y)",
                       "t = Conv (x, w)\n y = Mul (t, c)", {"c": ()})
    before = model.SerializeToString()
    out, _, skipped = absorb(model)
    assert skipped == [("Mul->y", "weight w is a graph input")]
    assert out.SerializeToString() == before


def test_refuses_zero_divisor(rng):
    model = parse_model(f"""{HEADER}
    g (float[1,2] x) => (float[1,2] y) <float[2,2] w = {{1, 2, 3, 4}}, float[2] z = {{1, 0}}> {{
        t = MatMul (x, w)
        y = Div (t, z)
    }}""")
    out, _, skipped = absorb(model)
    assert skipped == [("Div->y", "divisor has zeros")] and ops(out) == ["MatMul", "Div"]


def test_refuses_constant_that_adds_a_dimension(rng):
    model = model_from(rng, "(float[2,4,5,5] x) => (float[1,2,8,5,5] y)",
                       "t = Conv <pads=[1,1,1,1]> (x, w)\n y = Mul (t, c)",
                       {"w": (8, 4, 3, 3), "c": (1, 1, 1, 1, 1)})
    out, _, skipped = absorb(model)
    reason = "constant shape (1, 1, 1, 1, 1) would broadcast the output to a higher rank"
    assert skipped == [("Mul->y", reason)]
    assert out.SerializeToString() == model.SerializeToString()


def model_with_ints(rng: np.random.Generator, signature: str, body: str,
                    consts: dict[str, tuple], ints: dict[str, list[int]]) -> onnx.ModelProto:
    """model_from with int64 initializers (Reshape targets) beside the random float ones."""
    texts = [init_text(name, rng.uniform(0.5, 2, shape).astype(np.float32))
             for name, shape in consts.items()]
    texts += [init_text(name, np.asarray(value, np.int64)) for name, value in ints.items()]
    return parse_model(f"{HEADER}\n g {signature} <{', '.join(texts)}> {{ {body} }}")


@pytest.mark.parametrize("body, consts", [
    pytest.param("u = Add (b, t)\n y = Mul (u, c)", {"c": (6,)}, id="bias-first-then-scale"),
    pytest.param("u = Add (t, b)\n y = Div (u, c)", {"c": ()}, id="scalar-divisor"),
    pytest.param("u = Add (t, b)\n y = Sub (c, u)", {"c": (1, 1, 6)}, id="c-minus-x"),
    pytest.param("u = Add (t, b)\n v = Mul (u, c)\n y = Add (v, a)", {"c": (6,), "a": (6,)},
                 id="scale-then-shift"),
])
def test_scale_after_a_matmul_bias_add_folds_on_3d(rng, body, consts):
    """Whisper's q_proj(x) * scaling: the bias Add of a MatMul on [B, N, C] takes b·s + t."""
    model = model_from(rng, "(float[2,3,5] x) => (float[2,3,6] y)", f"t = MatMul (x, w)\n{body}",
                       {"w": (5, 6), "b": (6,), **consts})
    out, rewritten, _ = absorb(model)
    assert ops(out) == ["MatMul", "Add"] and len(rewritten) == body.count("=") - 1
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_function(model, out, **FP32)


HEAD_SPLIT = """t = MatMul (x, w)
    u = Add (t, b)
    r = Reshape (u, shape)
    p = Transpose <perm=[0,2,1,3]> (r)"""
HEAD_SPLIT_SIGNATURE = "(float[2,3,8] x) => (float[2,2,3,4] y)"


@pytest.mark.parametrize("body, consts", [
    pytest.param("y = Mul (p, c)", {"c": ()}, id="scalar"),
    pytest.param("y = Mul (c, p)", {"c": (1, 1, 1, 1)}, id="rank-4-single-value"),
    pytest.param("y = Add (p, c)", {"c": (1,)}, id="shift-into-bias"),
])
def test_single_value_scale_folds_through_layout_ops(rng, body, consts):
    """DETR scales q and k after the head-split Reshape/Transpose: one value commutes with them."""
    model = model_with_ints(rng, HEAD_SPLIT_SIGNATURE, f"{HEAD_SPLIT}\n{body}",
                            {"w": (8, 8), "b": (8,), **consts}, {"shape": [2, 3, 2, 4]})
    out, rewritten, _ = absorb(model)
    assert ops(out) == ["MatMul", "Add", "Reshape", "Transpose"] and len(rewritten) == 1
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_function(model, out, **FP32)


@pytest.mark.parametrize("body, consts, signature", [
    pytest.param("y = Mul (p, c)", {"c": (4,)}, HEAD_SPLIT_SIGNATURE, id="per-channel-moved"),
    pytest.param("y = Mul (p, c)", {"c": (1, 1, 1, 1, 1)},
                 "(float[2,3,8] x) => (float[1,2,2,3,4] y)", id="raises-the-rank"),
    pytest.param("q = Mul (p, c)\n p2 = Transpose <perm=[0,2,1,3]> (r)\n y = Add (q, p2)",
                 {"c": ()}, HEAD_SPLIT_SIGNATURE, id="layout-output-read-twice"),
])
def test_layout_ops_between_keep_what_does_not_commute(rng, body, consts, signature):
    """A per-channel constant after a Transpose, one that would raise the rank, and a layout
    output someone else reads: the Mul stays."""
    model = model_with_ints(rng, signature, f"{HEAD_SPLIT}\n{body}",
                            {"w": (8, 8), "b": (8,), **consts}, {"shape": [2, 3, 2, 4]})
    out, rewritten, _ = absorb(model)
    assert not rewritten and "Mul" in ops(out)
    assert_same_function(model, out, **FP32)


def test_a_bias_add_read_elsewhere_keeps_its_scale(rng):
    """The bias Add's output also feeds a Relu: folding the scale into W would change it."""
    model = model_from(rng, "(float[2,3,5] x) => (float[2,3,6] y, float[2,3,6] z)", """
        t = MatMul (x, w)
        u = Add (t, b)
        y = Mul (u, c)
        z = Relu (u)""", {"w": (5, 6), "b": (6,), "c": ()})
    out, rewritten, skipped = absorb(model)
    assert not rewritten and ("Mul->y", "u has other consumers") in skipped
    assert_same_function(model, out, **FP32)
