"""fuse-conv-bn: BN folded into Conv/ConvTranspose/Gemm/MatMul computes the same function, and
refused cases leave the model byte-for-byte unchanged with a reason."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.helpers import (
    FP32,
    assert_matches,
    assert_same_function,
    init_text,
    ops,
    parse_model,
    run_ort,
)
from tm2onnx.runtime import random_feeds
from tm2onnx.transforms import run_pipeline
from tm2onnx.transforms.fuse_conv_bn import bn_affine

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'


def bn_inits(rng: np.random.Generator, channels: int) -> list[str]:
    return [init_text("s", rng.uniform(0.5, 2, channels).astype(np.float32)),
            init_text("b", rng.uniform(-1, 1, channels).astype(np.float32)),
            init_text("mu", rng.uniform(-1, 1, channels).astype(np.float32)),
            init_text("var", rng.uniform(0.2, 2, channels).astype(np.float32))]


def conv_bn_model(rng: np.random.Generator, *, op: str = "Conv", cin: int = 8, cout: int = 8,
                  group: int = 1, bias: bool = True, eps: float = 1e-3,
                  tail: str = "", extra_inits: tuple[str, ...] = ()) -> onnx.ModelProto:
    """x -> op(x, w[, bias]) -> BN(eps) -> y (then `tail` lines, which may redefine y)."""
    shape = (cout, cin // group, 3, 3) if op == "Conv" else (cin, cout // group, 3, 3)
    inits = [init_text("w", rng.normal(size=shape).astype(np.float32)), *bn_inits(rng, cout)]
    if bias:
        inits.append(init_text("cb", rng.normal(size=cout).astype(np.float32)))
    inits += extra_inits
    args = "x, w, cb" if bias else "x, w"
    return parse_model(f"""{HEADER}
    g (float[2,{cin},6,6] x) => (float[2,{cout},6,6] y) <{", ".join(inits)}> {{
        [conv] t = {op} <group={group}, pads=[1,1,1,1]> ({args})
        [bn] y = BatchNormalization <epsilon={eps}> (t, s, b, mu, var)
        {tail}
    }}""")


@pytest.mark.parametrize("op, cin, cout, group, bias", [
    pytest.param("Conv", 8, 8, 1, True, id="conv-g1-bias"),
    pytest.param("Conv", 8, 12, 1, False, id="conv-g1-nobias"),
    pytest.param("Conv", 8, 12, 4, True, id="conv-g4-bias"),
    pytest.param("Conv", 8, 8, 8, False, id="conv-depthwise"),
    pytest.param("ConvTranspose", 8, 6, 1, True, id="deconv-g1-bias"),
    pytest.param("ConvTranspose", 8, 12, 4, False, id="deconv-g4-nobias"),
])
def test_folds_into_convolutions(rng, op, cin, cout, group, bias):
    model = conv_bn_model(rng, op=op, cin=cin, cout=cout, group=group, bias=bias)
    out, [report] = run_pipeline(model, ["fuse-conv-bn"])
    assert ops(out) == [op]
    assert report.rewritten == ["bn"] and not report.skipped
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_function(model, out, **FP32)


GEMM_CASES = [
    pytest.param("t = Gemm <transB=1, alpha=0.5, beta=2.0> (x, w, cb)", (6, 5), True, id="transB"),
    pytest.param("t = Gemm (x, w, cb)", (5, 6), True, id="gemm"),
    pytest.param("t = Gemm <transB=1> (x, w)", (6, 5), False, id="gemm-nobias"),
    pytest.param("t = MatMul (x, w)", (5, 6), False, id="matmul"),
]


@pytest.mark.parametrize("line, wshape, bias", GEMM_CASES)
def test_folds_into_gemm_and_matmul(rng, line, wshape, bias):
    inits = [init_text("w", rng.normal(size=wshape).astype(np.float32)), *bn_inits(rng, 6)]
    if bias:
        inits.append(init_text("cb", rng.normal(size=6).astype(np.float32)))
    model = parse_model(f"""{HEADER}
    g (float[3,5] x) => (float[3,6] y) <{", ".join(inits)}> {{
        {line}
        y = BatchNormalization <epsilon=0.01> (t, s, b, mu, var)
    }}""")
    out, [report] = run_pipeline(model, ["fuse-conv-bn"])
    assert ops(out) == ["Gemm"] and len(report.rewritten) == 1
    assert_same_function(model, out, **FP32)


def test_standalone_bn_stays_one_node(rng):
    """Nothing to fold into: one BN is one node; Mul+Add (the old default) grew the graph."""
    model = parse_model(f"""{HEADER}
    g (float[2,4,5,5] x) => (float[2,4,5,5] y) <{", ".join(bn_inits(rng, 4))}> {{
        r = Relu (x)
        y = BatchNormalization <epsilon=0.1> (r, s, b, mu, var)
    }}""")
    out, [report] = run_pipeline(model, ["fuse-conv-bn"])
    assert ops(out) == ["Relu", "BatchNormalization"] and not report.rewritten
    assert "kept as one node" in report.skipped[0][1]
    assert out.SerializeToString() == model.SerializeToString()


def test_standalone_bn_decomposed_on_request_says_it_grew(rng):
    model = parse_model(f"""{HEADER}
    g (float[2,4,5,5] x) => (float[2,4,5,5] y) <{", ".join(bn_inits(rng, 4))}> {{
        r = Relu (x)
        y = BatchNormalization <epsilon=0.1> (r, s, b, mu, var)
    }}""")
    out, [report] = run_pipeline(model, ["fuse-conv-bn"],
                                 options={"fuse-conv-bn": {"decompose_standalone": True}})
    assert ops(out) == ["Relu", "Mul", "Add"] and len(report.rewritten) == 1
    assert "nodes 2→3 (grew)" in str(report)
    assert_same_function(model, out, **FP32)


FLATTEN_CASES = [
    pytest.param("f = Flatten <axis=2> (m)", id="flatten"),
    pytest.param("f = Reshape (m, shp)", id="reshape"),
]


@pytest.mark.parametrize("flatten", FLATTEN_CASES)
def test_bn_behind_flatten_folds_into_matmul(rng, flatten):
    """LeViT's Linear_norm: MatMul on [B, N, K] -> flatten(0, 1) -> BN -> back to [B, N, C]."""
    inits = [init_text("w", rng.normal(size=(5, 6)).astype(np.float32)), *bn_inits(rng, 6),
             init_text("shp", np.array([-1, 6], np.int64)),
             init_text("back", np.array([2, 3, 6], np.int64))]
    model = parse_model(f"""{HEADER}
    g (float[2,3,5] x) => (float[2,3,6] y) <{", ".join(inits)}> {{
        m = MatMul (x, w)
        {flatten}
        n = BatchNormalization <epsilon=0.01> (f, s, b, mu, var)
        y = Reshape (n, back)
    }}""")
    out, [report] = run_pipeline(model, ["fuse-conv-bn"])
    assert ops(out) == ["Reshape", "Gemm", "Reshape"] and len(report.rewritten) == 1
    assert_same_function(model, out, **FP32)


@pytest.mark.parametrize("group, cin, cout", [
    pytest.param(1, 4, 6, id="g1"), pytest.param(2, 4, 6, id="g2"),
    pytest.param(4, 4, 4, id="depthwise")])
def test_bn_folds_into_following_unpadded_conv(rng, group, cin, cout):
    inits = [init_text("w", rng.normal(size=(cout, cin // group, 1, 1)).astype(np.float32)),
             init_text("cb", rng.normal(size=cout).astype(np.float32)), *bn_inits(rng, cin)]
    model = parse_model(f"""{HEADER}
    g (float[2,{cin},5,5] x) => (float[2,{cout},5,5] y, float[2,{cin},5,5] r) <{", ".join(inits)}> {{
        r = Relu (x)
        n = BatchNormalization <epsilon=0.01> (r, s, b, mu, var)
        y = Conv <group={group}> (n, w, cb)
    }}""")
    out, [report] = run_pipeline(model, ["fuse-conv-bn"])
    assert ops(out) == ["Relu", "Conv"] and len(report.rewritten) == 1
    assert_same_function(model, out, **FP32)


def test_bn_before_padded_conv_is_kept(rng):
    inits = [init_text("w", rng.normal(size=(4, 4, 3, 3)).astype(np.float32)), *bn_inits(rng, 4)]
    model = parse_model(f"""{HEADER}
    g (float[2,4,5,5] x) => (float[2,4,5,5] y) <{", ".join(inits)}> {{
        r = Relu (x)
        n = BatchNormalization <epsilon=0.01> (r, s, b, mu, var)
        y = Conv <pads=[1,1,1,1]> (n, w)
    }}""")
    out, [report] = run_pipeline(model, ["fuse-conv-bn"])
    assert "the Conv after it pads" in report.skipped[0][1] and not report.rewritten
    assert out.SerializeToString() == model.SerializeToString()


def test_bn_chain_folds_twice(rng):
    tail = "z = BatchNormalization <epsilon=0.5> (y, s, b, mu, var)"
    model = conv_bn_model(rng, tail=tail)
    model.graph.output[0].name = "z"
    out, [report] = run_pipeline(model, ["fuse-conv-bn"])
    assert ops(out) == ["Conv"] and len(report.rewritten) == 2
    assert_same_function(model, out, **FP32)


REFUSALS = [
    pytest.param("u = Relu (t)\n y2 = Add (y, u)", "t has other consumers", id="shared-output"),
    pytest.param("t2 = Conv <group=1, pads=[1,1,1,1]> (x, w, cb)\n y2 = Add (y, t2)",
                 "weight w is shared with another node", id="shared-weight"),
]


@pytest.mark.parametrize("tail, reason", REFUSALS)
def test_refuses_and_leaves_model_unchanged(rng, tail, reason):
    model = conv_bn_model(rng, tail=tail)
    model.graph.output[0].name = "y2"
    before = model.SerializeToString()
    out, [report] = run_pipeline(model, ["fuse-conv-bn"])
    assert report.skipped == [("bn", reason)] and not report.rewritten
    assert out.SerializeToString() == before == model.SerializeToString()


def test_refuses_weight_given_as_graph_input(rng):
    model = parse_model(f"""{HEADER}
    g (float[1,4,6,6] x, float[4,4,3,3] w) => (float[1,4,6,6] y) <{", ".join(bn_inits(rng, 4))}>
    {{
        t = Conv <pads=[1,1,1,1]> (x, w)
        y = BatchNormalization (t, s, b, mu, var)
    }}""")
    before = model.SerializeToString()
    out, [report] = run_pipeline(model, ["fuse-conv-bn"])
    assert report.skipped[0][1] == "weight w is a graph input"
    assert out.SerializeToString() == before


def test_bn_affine_uses_epsilon():
    s, t = bn_affine(*(np.ones(1, np.float32) for _ in range(4)), epsilon=3.0)
    np.testing.assert_allclose([s[0], t[0]], [0.5, 0.5])


@settings(max_examples=25, deadline=None)
@example(groups=4, cin_mult=3, cout_mult=2, eps=0.00390625, bias=True, scale=14.0, seed=6479)
@given(groups=st.sampled_from([1, 2, 4]), cin_mult=st.integers(1, 3),
       cout_mult=st.integers(1, 3), eps=st.floats(1e-5, 0.5), bias=st.booleans(),
       scale=st.floats(0.05, 20), seed=st.integers(0, 2**16))
def test_property_conv_bn_mul_chain_folds_to_one_conv(groups, cin_mult, cout_mult, eps, bias,
                                                      scale, seed):
    rng = np.random.default_rng(seed)
    cin, cout = groups * cin_mult, groups * cout_mult
    model = conv_bn_model(rng, cin=cin, cout=cout, group=groups, bias=bias, eps=eps,
                          tail="z = Mul (k, y)", extra_inits=(init_text("k", np.float32(scale)),))
    model.graph.output[0].name = "z"
    out, reports = run_pipeline(model, ["deploy"])
    assert ops(out) == ["Conv"], [str(r) for r in reports]
    # Folding reorders fp32 rounding of terms as large as the largest output (scale up to 20,
    # 1/sqrt(eps) up to ~300), so an output near zero carries an absolute error relative to
    # that magnitude, not to itself: atol scales with max|reference|.
    feeds = random_feeds(model, seed=seed)
    reference = run_ort(model, feeds)
    magnitude = max(1.0, float(np.abs(reference["z"]).max()))
    assert_matches(reference, run_ort(out, feeds), rtol=1e-4, atol=1e-5 * magnitude)


def test_folded_weights_keep_the_exporters_names_unless_a_graph_output_reads_them(rng):
    """A weight only the Conv reads takes the folded values in place (its name stays, the file
    gains no new name); one that is also a graph output must keep its values."""
    text = lambda outputs, extra: f"""{HEADER}
    g (float[1,2,4,4] x) => (float[1,2,4,4] y{outputs})
      <{init_text("w", rng.normal(size=(2, 2, 1, 1)).astype(np.float32))},
       {init_text("cb", rng.normal(size=2).astype(np.float32))}, {", ".join(bn_inits(rng, 2))}> {{
        c = Conv (x, w, cb)
        y = BatchNormalization (c, s, b, mu, var){extra}
    }}"""
    model = parse_model(text("", ""))
    out, _ = run_pipeline(model, ["fuse-conv-bn"])
    assert ops(out) == ["Conv"] and out.graph.node[0].input[1:] == ["w", "cb"]
    assert_same_function(model, out, **FP32)
    exposed = parse_model(text(", float[2,2,1,1] w", ""))  # the weight itself is an output
    out, _ = run_pipeline(exposed, ["fuse-conv-bn"])
    assert ops(out) == ["Conv"] and out.graph.node[0].input[1] != "w"
    x = {"x": rng.normal(size=(1, 2, 4, 4)).astype(np.float32)}
    assert_matches(run_ort(exposed, x), run_ort(out, x), **FP32)  # w unchanged too
