"""cse (also run inside fold-shapes): duplicate nodes merge, cascading to their readers;
random ops, graph outputs and differing attributes or inputs keep their nodes."""

from __future__ import annotations

import numpy as np
import onnx

from tests.helpers import FP32, assert_same_function, ops, parse_model, run_ort
from tm2onnx.transforms import run_pipeline

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def model_of(text: str) -> onnx.ModelProto:
    return parse_model(f"{HEADER}\n{text}", ir_version=8)


def test_duplicates_merge_and_their_readers_too():
    # SSDlite's export: two identical Transposes of one tensor, then identical NonZeros.
    model = model_of("""g (float[2,3] x) => (float[3,2] y, int64[2,N] z)
                          <float[1] c = {0.5}, float[1] c2 = {0.5}> {
        t1 = Transpose <perm = [1, 0]> (x)
        t2 = Transpose <perm = [1, 0]> (x)
        g1 = Greater (t1, c)
        g2 = Greater (t2, c2)
        n1 = NonZero (g1)
        n2 = NonZero (g2)
        a = Relu (t1)
        b = Relu (t2)
        y = Add (a, b)
        s = Shape (n2)
        z = NonZero (g1)
    }""")
    out, [report] = run_pipeline(model, ["cse"])
    assert sorted(ops(out)) == ["Add", "Greater", "NonZero", "Relu", "Transpose"], \
        report.details()
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    before, after = run_ort(model, {"x": x}), run_ort(out, {"x": x})
    np.testing.assert_array_equal(before["z"], after["z"])
    np.testing.assert_allclose(before["y"], after["y"], rtol=FP32["rtol"], atol=FP32["atol"])


def test_different_attributes_inputs_random_ops_and_outputs_stay():
    model = model_of("""g (float[2,3] x) => (float[2,3] y, float[2,3] z, float[2,3] w, float[2,3] v)
                          <float[1] c = {1.5}, float[1] d = {2.5}> {
        y = Mul (x, c)
        z = Mul (x, c)
        m1 = Mul (x, d)
        r1 = RandomUniformLike <seed = 1.0> (x)
        r2 = RandomUniformLike <seed = 1.0> (x)
        s = Add (r1, r2)
        w = Add (m1, s)
        a = Softmax <axis = 0> (x)
        b = Softmax <axis = 1> (x)
        v = Add (a, b)
    }""")
    out, [report] = run_pipeline(model, ["cse"])
    # y and z are graph outputs; c != d; RandomUniformLike never merges; axes differ.
    assert sorted(ops(out)) == sorted(["Mul", "Mul", "Mul", "RandomUniformLike",
                                       "RandomUniformLike", "Add", "Add", "Softmax",
                                       "Softmax", "Add"]), report.details()
    assert not report.rewritten


def test_deploy_merges_duplicates_exactly(rng):
    w = rng.normal(size=(3, 3)).astype(np.float32)
    values = ", ".join(repr(v) for v in w.reshape(-1).tolist())
    model = model_of(f"""g (float[2,3] x) => (float[2,3] y) <float[3,3] w = {{{values}}}> {{
        a = MatMul (x, w)
        b = MatMul (x, w)
        ta = Tanh (a)
        tb = Tanh (b)
        y = Sub (ta, tb)
    }}""")
    out, _ = run_pipeline(model, ["deploy"])
    assert ops(out).count("MatMul") == 1 and ops(out).count("Tanh") == 1, ops(out)
    assert_same_function(model, out, **FP32)


def test_constant_nodes_merge_only_when_their_values_are_equal():
    # A Constant node's value is an unnamed tensor: keyed by name, every Constant node looked
    # like the first one, and `x * 1.5 * -0.5` became `x * 1.5 * 1.5` (found by fuzzing).
    model = model_of("""g (float[2,1] x) => (float[2,1] y, float[2,1] z)
                          {
        c1 = Constant <value = float {1.5}> ()
        c2 = Constant <value = float {-0.5}> ()
        c3 = Constant <value = float {1.5}> ()
        m = Mul (x, c1)
        y = Mul (m, c2)
        z = Mul (y, c3)
    }""")
    out, [report] = run_pipeline(model, ["cse"])
    assert ops(out).count("Constant") == 2, report.details()
    x = np.random.default_rng(0).normal(size=(2, 1)).astype(np.float32)
    before, after = run_ort(model, {"x": x}), run_ort(out, {"x": x})
    for name in ("y", "z"):
        np.testing.assert_array_equal(before[name], after[name])
