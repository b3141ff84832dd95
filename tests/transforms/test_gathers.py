"""fold-shapes re-cuts Gathers of constant indices: Unsqueeze(Gather(x, i)) is Gather(x, [i]),
a Concat of Gathers of one tensor along their axis is one Gather, and a Gather of every index
in order is its input; each checked against the untransformed model (onnxruntime, no
optimizations), including data-dependent sizes of 0."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.helpers import FP32, assert_matches, ops, parse_model, run_ort, selection_feeds
from tm2onnx.transforms import run_pipeline


def model_of(body: str, opset: int = 17) -> onnx.ModelProto:
    return parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n{body}', ir_version=8)


def _fold(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    out, [report] = run_pipeline(model, ["fold-shapes"])
    return out, report.details()


def _x(shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=shape).astype(np.float32)}


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


UNSQUEEZED = [
    pytest.param("int64 i = {2}", "Gather <axis = 0> (x, i)", "Unsqueeze (g, ax)",
                 "int64[1] ax = {0}", "float[1,4,5]", 17, id="axis0"),
    pytest.param("int32 i = {-1}", "Gather <axis = 1> (x, i)", "Unsqueeze (g, ax)",
                 "int64[1] ax = {1}", "float[3,1,5]", 17, id="axis1-negative-int32-index"),
    pytest.param("int64 i = {0}", "Gather <axis = -1> (x, i)", "Unsqueeze (g, ax)",
                 "int64[1] ax = {-1}", "float[3,4,1]", 17, id="negative-axes"),
    pytest.param("int64 i = {3}", "Gather <axis = 2> (x, i)", "Unsqueeze (g, ax)",
                 "int64[1] ax = {-1}", "float[3,4,1]", 17, id="mixed-sign-axes"),
    pytest.param("int64 i = {1}", "Gather <axis = 0> (x, i)", "Unsqueeze <axes = [0]> (g)",
                 "int64[1] ax = {0}", "float[1,4,5]", 11, id="opset11-axes-attribute"),
]


@pytest.mark.parametrize("index, gather, unsqueeze, axes, out_type, opset", UNSQUEEZED)
def test_unsqueeze_of_a_scalar_gather_is_a_gather_of_one_index(index, gather, unsqueeze, axes,
                                                               out_type, opset):
    model = model_of(f"""g (float[3,4,5] x) => ({out_type} y) <{index}, {axes}> {{
        g = {gather}
        y = {unsqueeze}
    }}""", opset)
    out, details = _fold(model)
    assert ops(out) == ["Gather"], details
    assert _initializer(out, out.graph.node[0].input[1]).shape == (1,)
    feeds = _x((3, 4, 5))
    assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


def test_gather_of_the_only_index_of_a_unit_dim_goes():
    model = model_of("""g (float[1,4,5] x) => (float[1,4,5] y) <int64 i = {0}, int64[1] ax = {0}> {
        r = Relu (x)
        g = Gather <axis = 0> (r, i)
        y = Unsqueeze (g, ax)
    }""")
    out, details = _fold(model)
    assert ops(out) == ["Relu"], details
    feeds = _x((1, 4, 5))
    assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


# A shape rebuilt dim by dim from two Shape nodes of one tensor (CSE makes them one): the
# whole Shape, for any sizes, 0 included.
SHAPE_BY_DIMS = """g (float[N,M,K] x) => (int64[3] y)
                   <int64 zero = {0}, int64 one = {1}, int64 two = {2}, int64[1] ax = {0}> {
    s = Shape (x)
    t = Shape (x)
    a = Gather <axis = 0> (s, zero)
    b = Gather <axis = 0> (t, one)
    c = Gather <axis = 0> (s, two)
    ua = Unsqueeze (a, ax)
    ub = Unsqueeze (b, ax)
    uc = Unsqueeze (c, ax)
    y = Concat <axis = 0> (ua, ub, uc)
}"""


def test_a_shape_rebuilt_from_its_dims_is_the_shape():
    model = model_of(SHAPE_BY_DIMS)
    out, details = _fold(model)
    assert ops(out) == ["Shape"], details
    for shape in ((2, 3, 4), (0, 3, 1)):
        assert_matches(run_ort(model, _x(shape)), run_ort(out, _x(shape)), **FP32)


def test_data_dependent_dims_join_and_empty_selections_still_run():
    model = model_of("""g (float[A,4] boxes, float[A] scores) => (float[K,4] y)
                        <float thr = {0.5}, int64 zero = {0}, int64 one = {1}, int64[1] ax = {0},
                         float[1] fill = {1.5}> {
        m = Greater (scores, thr)
        nz = NonZero (m)
        idx = Squeeze (nz, ax)
        sel = Gather <axis = 0> (boxes, idx)
        s = Shape (sel)
        n = Gather <axis = 0> (s, zero)
        c = Gather <axis = 0> (s, one)
        un = Unsqueeze (n, ax)
        uc = Unsqueeze (c, ax)
        dims = Concat <axis = 0> (un, uc)
        y = Expand (fill, dims)
    }""")
    out, details = _fold(model)
    assert "Concat" not in ops(out) and "Unsqueeze" not in ops(out), details
    for selected in (0, 1, 5):
        feeds = selection_feeds(selected)
        assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


def test_a_stretch_of_gathers_along_the_concat_axis_joins_others_stay():
    model = model_of("""g (float[3,4,5] x) => (float[3,4,5] y)
                        <int64[1] i0 = {0}, int32[2] i1 = {-1, 2}, int64[1] i2 = {1}> {
        a = Gather <axis = 1> (x, i0)
        b = Gather <axis = 1> (x, i1)
        r = Relu (a)
        c = Gather <axis = -2> (x, i2)
        y = Concat <axis = 1> (r, b, c)
    }""")
    out, details = _fold(model)
    # b and c (int32 and int64 indices, axes 1 and -2) are one Gather; `a` feeds a Relu.
    assert sorted(ops(out)) == ["Concat", "Gather", "Gather", "Relu"], details
    joined = next(n for n in out.graph.node if n.op_type == "Gather" and n.input[1] != "i0")
    assert _initializer(out, joined.input[1]).tolist() == [-1, 2, 1]
    feeds = _x((3, 4, 5))
    assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


REFUSED = [
    pytest.param("""g (float[3,4,5] x) => (float[1,4,5] y, float[4,5] z) <int64 i = {1}, int64[1] ax = {0}> {
        g = Gather <axis = 0> (x, i)
        y = Unsqueeze (g, ax)
        z = Relu (g)
    }""", ["Gather", "Unsqueeze", "Relu"], id="gather-read-twice"),
    pytest.param("""g (float[3,4,5] x) => (float[4,1,5] y) <int64 i = {1}, int64[1] ax = {1}> {
        g = Gather <axis = 0> (x, i)
        y = Unsqueeze (g, ax)
    }""", ["Gather", "Unsqueeze"], id="unsqueeze-on-another-axis"),
    pytest.param("""g (float[3,4,5] x) => (float[1,1,4,5] y) <int64 i = {1}, int64[2] ax = {0, 1}> {
        g = Gather <axis = 0> (x, i)
        y = Unsqueeze (g, ax)
    }""", ["Gather", "Unsqueeze"], id="two-axes"),
    pytest.param("""g (float[3,4,5] x, int64 i) => (float[1,4,5] y) <int64[1] ax = {0}> {
        g = Gather <axis = 0> (x, i)
        y = Unsqueeze (g, ax)
    }""", ["Gather", "Unsqueeze"], id="index-is-an-input"),
    pytest.param("""g (float[3,4,5] x) => (float[6,1,5] y) <int64[1] i = {0}, int64[1] j = {1}> {
        a = Gather <axis = 1> (x, i)
        b = Gather <axis = 1> (x, j)
        y = Concat <axis = 0> (a, b)
    }""", ["Gather", "Gather", "Concat"], id="concat-on-another-axis"),
    pytest.param("""g (float[3,4,5] x, float[3,4,5] w) => (float[3,2,5] y) <int64[1] i = {0}> {
        a = Gather <axis = 1> (x, i)
        b = Gather <axis = 1> (w, i)
        y = Concat <axis = 1> (a, b)
    }""", ["Gather", "Gather", "Concat"], id="two-sources"),
    pytest.param("""g (float[3,4,5] x) => (float[3,2,5] y, float[3,1,5] z) <int64[1] i = {0}, int64[1] j = {1}> {
        a = Gather <axis = 1> (x, i)
        b = Gather <axis = 1> (x, j)
        y = Concat <axis = 1> (a, b)
        z = Relu (a)
    }""", ["Gather", "Gather", "Concat", "Relu"], id="gather-read-elsewhere"),
    pytest.param("""g (float[3,3] x) => (float[3,3] y) <int64[3] i = {0, 2, 1}> {
        r = Relu (x)
        y = Gather <axis = 1> (r, i)
    }""", ["Relu", "Gather"], id="reordering-gather"),
    pytest.param("""g (float[3,N] x) => (float[3,1] y) <int64[1] i = {0}> {
        r = Relu (x)
        y = Gather <axis = 1> (r, i)
    }""", ["Relu", "Gather"], id="gather-of-a-symbolic-dim"),
]


@pytest.mark.parametrize("body, kept", REFUSED)
def test_gathers_that_are_not_a_recut_stay(body, kept):
    model = model_of(body)
    out, details = _fold(model)
    assert ops(out) == kept, details
    feeds = {i.name: np.random.default_rng(1).normal(size=(3, 4, 5)).astype(np.float32)
             for i in model.graph.input if i.name in ("x", "w")}
    if "N] x" in body or "3,3] x" in body:
        feeds = {"x": np.ones((3, 3), np.float32)}
    if "int64 i)" in body:
        feeds["i"] = np.array(-2, np.int64)
    assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)
