"""fold-shapes: shape arithmetic folds once shapes are inferred, no-op nodes go without copying
weights, 2-D MatMul+Add becomes Gemm, and overridable initializers are never folded."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.helpers import (
    FP32,
    assert_matches,
    assert_same_function,
    init_text,
    ops,
    parse_model,
    run_ort,
)
from tm2onnx.transforms import run_pipeline

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def model_of(text: str) -> onnx.ModelProto:
    return parse_model(f"{HEADER}\n{text}", ir_version=8)


def test_shape_arithmetic_folds_to_constants():
    model = model_of("""g (float[2,3,4,4] x) => (float[2,48] y) <int64[1] zero = {0}> {
        s = Shape (x)
        b = Gather <axis = 0> (s, zero)
        minus = Constant <value = int64[1] {-1}> ()
        shp = Concat <axis = 0> (b, minus)
        y = Reshape (x, shp)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Reshape"], report.details()
    assert_same_function(model, out, **FP32)


def test_symbolic_batch_keeps_its_shape_but_folds_static_dims():
    model = model_of("""g (float[N,3,4,4] x) => (float[N,48] y) <int64[1] zero = {0}> {
        s = Shape (x)
        b = Gather <axis = 0> (s, zero)
        one = Constant <value = int64[1] {1}> ()
        c = Gather <axis = 0> (s, one)
        h = Constant <value = int64[1] {16}> ()
        ch = Mul (c, h)
        shp = Concat <axis = 0> (b, ch)
        y = Reshape (x, shp)
    }""")
    out, _ = run_pipeline(model, ["deploy"])
    assert ops(out) == ["Reshape"], ops(out)  # N copied (0), the static dims multiplied
    target = onnx.numpy_helper.to_array(out.graph.initializer[0])
    assert target.tolist() == [0, 48]
    dims = [d.dim_param or d.dim_value for d in out.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["N", 48]
    x = np.random.default_rng(0).normal(size=(5, 3, 4, 4)).astype(np.float32)
    assert_matches(run_ort(model, {"x": x}), run_ort(out, {"x": x}), **FP32)


def test_no_ops_go_and_weights_are_not_copied(rng):
    w = rng.normal(size=(4, 4)).astype(np.float32)
    model = model_of(f"""g (float[2,4] x) => (float[2,4] y, float[2,4] z) <{init_text("w", w)},
                          int64[2] same = {{2, 4}}> {{
        wi = Identity (w)
        a = MatMul (x, wi)
        d = Dropout (a)
        c = Cast <to = 1> (d)
        t = Transpose <perm = [0, 1]> (c)
        r = Reshape (t, same)
        y = Relu (r)
        v = MatMul (y, wi)
        z = Identity (v)
    }}""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["MatMul", "Relu", "MatMul"], report.details()
    assert [i.name for i in out.graph.initializer] == ["w"]
    assert [o.name for o in out.graph.output] == ["y", "z"]  # graph outputs keep their names
    assert out.ByteSize() <= model.ByteSize()
    assert_same_function(model, out, **FP32)


def test_two_d_matmul_add_becomes_gemm_three_d_stays(rng):
    w, b = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    model = model_of(f"""g (float[2,4] x, float[5,2,4] x3) => (float[2,3] y, float[5,2,3] z)
                          <{init_text("w", w)}, {init_text("b", b)}> {{
        m = MatMul (x, w)
        y = Add (m, b)
        m3 = MatMul (x3, w)
        z = Add (b, m3)
    }}""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert sorted(ops(out)) == ["Add", "Gemm", "MatMul"], report.details()
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert_same_function(model, out, **FP32)


def test_initializer_that_is_an_input_stays_overridable():
    # Regression: gs imports an initializer listed as a graph input as a plain constant, so the
    # input vanished and folding baked its default into the model.
    model = model_of("""g (float[2] x, float[2] scale) => (float[2] y) <float[2] scale = {2, 3}> {
        s = Identity (scale)
        t = Mul (s, s)
        y = Mul (x, t)
    }""")
    out, _ = run_pipeline(model, ["deploy"])
    onnx.checker.check_model(out, full_check=True)
    assert [i.name for i in out.graph.input] == ["x", "scale"]
    assert "scale" in [i.name for i in out.graph.initializer]
    feeds = {"x": np.ones(2, np.float32), "scale": np.array([5, 7], np.float32)}
    assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)
    assert_matches(run_ort(model, {"x": feeds["x"]}), run_ort(out, {"x": feeds["x"]}), **FP32)


def test_ir_version_is_the_inputs():
    # Regression: every output was stamped IR 10, which onnxruntime 1.15 (IR <= 9) refuses.
    model = model_of("""g (float[2] x) => (float[2] y) {
        i = Identity (x)
        y = Relu (i)
    }""")
    out, _ = run_pipeline(model, ["deploy"])
    assert ops(out) == ["Relu"] and out.ir_version == 8
    assert all(d.domain in ("", "ai.onnx") for d in out.opset_import)


def test_reshape_chains_merge_and_zero_pads_and_whole_slices_go():
    model = model_of("""g (float[2,3,4] x) => (float[2,12] y, float[6,2,2] z)
      <int64[2] a = {6, 4}, int64[2] b = {2, 12}, int64[3] keep = {0, 2, 2},
       int64[6] pads = {0, 0, 0, 0, 0, 0}, int64[1] s0 = {0}, int64[1] s1 = {4}> {
        p = Pad (x, pads)
        q = Slice (p, s0, s1)
        r1 = Reshape (q, a)
        y = Reshape (r1, b)
        r2 = Reshape (x, a)
        z = Reshape (r2, keep)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    # y's chain becomes one Reshape; z's copied dim 0 is r2's, a known 6: r2 -> z merges too.
    assert ops(out) == ["Reshape", "Reshape"], report.details()
    assert_same_function(model, out, **FP32)


def test_unit_operands_and_transpose_pairs_go_broadcasts_stay():
    model = model_of("""g (float[2,3] x, float[1,3] s) => (float[2,3] y, float[3,2] z, float[2,3] w)
      <float[3] zero = {0, 0, 0}, float one = {1}, float[2,3] zeros = {0, 0, 0, 0, 0, 0}> {
        a = Add (zero, x)
        m = Mul (a, one)
        t1 = Transpose <perm = [1, 0]> (m)
        t2 = Transpose <perm = [1, 0]> (t1)
        y = Div (t2, one)
        z = Transpose <perm = [1, 0]> (y)
        w = Add (s, zeros)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    # y = x, but a graph output fed by a graph input keeps its node; z = x^T; w's Add
    # broadcasts s to [2,3], so it is not a no-op.
    assert sorted(ops(out)) == ["Add", "Div", "Transpose"], report.details()
    assert [o.name for o in out.graph.output] == ["y", "z", "w"]
    x = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    s = np.random.default_rng(1).normal(size=(1, 3)).astype(np.float32)
    assert_matches(run_ort(model, {"x": x, "s": s}), run_ort(out, {"x": x, "s": s}), **FP32)


def test_single_input_concat_single_output_split_and_scalar_unit_on_dynamic_shapes_go():
    # SSDlite's export: Concat of one tensor, Split into one piece, x * 1.0 after a NonZero.
    model = model_of("""g (float[N,4] x) => (float[N,4] y, int64[2,M] z, float[N,4] w)
                          <float one = {1}, float[1,1] one11 = {1}, int64[1] s = {4}> {
        c = Concat <axis = 0> (x)
        m = Mul (c, one)
        y = Relu (m)
        nz = NonZero (x)
        z = Mul (nz, nz)
        p = Split <axis = 1> (y, s)
        q = Mul (p, one11)
        w = Tanh (q)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert sorted(ops(out)) == ["Mul", "NonZero", "Relu", "Tanh"], report.details()
    x = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    x[x < 0] = 0
    ref, got = run_ort(model, {"x": x}), run_ort(out, {"x": x})
    np.testing.assert_array_equal(ref["y"], got["y"])
    np.testing.assert_array_equal(ref["z"], got["z"])
    np.testing.assert_array_equal(ref["w"], got["w"])


def test_unit_that_broadcasts_past_an_unknown_rank_stays():
    model = model_of("""g (float[N] x) => (float[1,N] y) <float[1,1] one = {1}> {
        r = Relu (x)
        y = Mul (r, one)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Relu", "Mul"], report.details()  # [1,1] grows rank-1 x to rank 2
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(run_ort(model, {"x": x})["y"], run_ort(out, {"x": x})["y"])


def test_zero_bias_on_dynamic_dims_goes_when_it_cannot_broadcast():
    """DistilBERT with dynamic axes: `x + 0` of a [768] zero bias on [batch, sequence, 768],
    and `x * 1` of a [1, S, C] one on [batch, S, C]; neither can change the shape."""
    model = model_of("""g (float[B,T,4] x, float[B,3,4] v) => (float[B,T,4] y, float[B,3,4] w)
                          <float[4] zero = {0, 0, 0, 0}, float[1,3,4] ones = {1,1,1,1,1,1,1,1,1,1,1,1}> {
        r = Relu (x)
        y = Add (r, zero)
        u = Relu (v)
        w = Mul (ones, u)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Relu", "Relu"], report.details()
    feeds = {"x": np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32),
             "v": np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)}
    assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


def test_zero_that_a_symbolic_dim_could_broadcast_stays():
    # T may be 1: then x + zeros[3, 4] is [B, 3, 4], not x's shape.
    model = model_of("""g (float[B,T,4] x) => (float[B,?,4] y) <float[3,4] zero = {0,0,0,0,0,0,0,0,0,0,0,0}> {
        r = Relu (x)
        y = Add (r, zero)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Relu", "Add"], report.details()
    x = np.random.default_rng(0).normal(size=(2, 1, 4)).astype(np.float32)
    assert run_ort(out, {"x": x})["y"].shape == (2, 3, 4)


SLICE_PAIRS = [
    pytest.param("a = Slice (x, s0, e0, ax1, st2)\n        y = Slice (a, s1, e0, ax2, st2)",
                 id="swin-patch-merge"),
    pytest.param("a = Slice (x, s0, e0, axm1)\n        y = Slice (a, s1, e0, ax1, st2)",
                 id="negative-axis-default-steps"),
]


@pytest.mark.parametrize("pair", SLICE_PAIRS)
def test_one_axis_slices_on_different_axes_merge(pair):
    model = model_of(f"""g (float[B,4,8,6] x) => (float[B,?,?,?] y)
        <int64[1] s0 = {{0}}, int64[1] s1 = {{1}}, int64[1] e0 = {{9223372036854775807}},
         int64[1] ax1 = {{1}}, int64[1] ax2 = {{2}}, int64[1] axm1 = {{-1}},
         int64[1] st2 = {{2}}> {{
        {pair}
    }}""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Slice"] and len(out.graph.node[0].input) == 5, report.details()
    x = np.random.default_rng(0).normal(size=(2, 4, 8, 6)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(model, {"x": x})["y"], run_ort(out, {"x": x})["y"])


def test_slices_on_the_same_axis_or_a_shared_one_stay():
    model = model_of("""g (float[2,4,8] x) => (float[2,?,?] y, float[2,?,8] a)
        <int64[1] s1 = {1}, int64[1] e = {9223372036854775807}, int64[1] ax1 = {1},
         int64[1] ax2 = {2}> {
        a = Slice (x, s1, e, ax1)
        b = Slice (a, s1, e, ax1)
        y = Slice (b, s1, e, ax2)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    # a is a graph output (not merged into b); b and y slice axes 1 and 2: they merge.
    assert ops(out) == ["Slice", "Slice"], report.details()
    x = np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32)
    ref, got = run_ort(model, {"x": x}), run_ort(out, {"x": x})
    np.testing.assert_array_equal(ref["y"], got["y"])
    np.testing.assert_array_equal(ref["a"], got["a"])


def _value_op_chain(links: int) -> onnx.ModelProto:
    """`links` Reshapes, each to the reversed shape of the last, its target Mod(Shape(.), 1000):
    onnx's data propagation stops at Mod, so each link folds only once the one before has
    folded and inference has run again (Swin-T's shifted-window masks chain like this)."""
    body, prev = [], "x"
    for i in range(links):
        body += [f"s{i} = Shape ({prev})", f"m{i} = Mod (s{i}, big)",
                 f"g{i} = Gather <axis = 0> (m{i}, rev)", f"t{i} = Reshape ({prev}, g{i})",
                 f"r{i} = Relu (t{i})"]
        prev = f"r{i}"
    out = "float[2,3,4]" if links % 2 == 0 else "float[4,3,2]"
    return model_of(f"""g (float[2,3,4] x) => ({out} y)
        <int64[1] big = {{1000}}, int64[3] rev = {{2, 1, 0}}> {{
        {chr(10).join(body)}
        y = Identity ({prev})
    }}""")


def test_a_chain_of_value_ops_folds_to_its_end():
    model = _value_op_chain(6)  # 7 rounds of inference and folding; 4 stopped half-way
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Reshape", "Relu"] * 6, report.details()
    assert all(len(n.input) < 2 or n.input[1] in {i.name for i in out.graph.initializer}
               for n in out.graph.node), "a Reshape target is still computed"
    assert not report.notes, report.details()
    assert_same_function(model, out, **FP32)


def test_the_round_cap_says_more_may_fold(monkeypatch):
    from tm2onnx.transforms import fold_shapes

    monkeypatch.setattr(fold_shapes, "MAX_ROUNDS", 2)
    model = _value_op_chain(4)
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert "Mod" in ops(out) and any("run fold-shapes again" in n for n in report.notes)
    assert_same_function(model, out, **FP32)


def test_a_slice_read_only_by_slices_on_other_axes_merges_into_each():
    # Swin's patch merging: x[:, 0::2] read by x[:, 0::2, 0::2] and x[:, 0::2, 1::2].
    model = model_of("""g (float[2,4,6,3] x) => (float[2,2,3,3] a, float[2,2,3,3] b, float[2,2,?,?] c)
        <int64[1] s0 = {0}, int64[1] s1 = {1}, int64[1] e = {9223372036854775807},
         int64[1] ax1 = {1}, int64[1] ax2 = {2}, int64[1] st2 = {2}> {
        rows = Slice (x, s0, e, ax1, st2)
        a = Slice (rows, s0, e, ax2, st2)
        b = Slice (rows, s1, e, ax2, st2)
        odd = Slice (x, s1, e, ax1, st2)
        c = Relu (odd)
        d = Slice (odd, s1, e, ax2, st2)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    # rows goes into a and b; odd also feeds a Relu, so it stays (d is dead and goes).
    assert sorted(ops(out)) == ["Relu", "Slice", "Slice", "Slice"], report.details()
    readers = {n.output[0]: n.input[0] for n in out.graph.node}
    assert readers["a"] == readers["b"] == readers["odd"] == "x", readers
    x = np.random.default_rng(0).normal(size=(2, 4, 6, 3)).astype(np.float32)
    ref, got = run_ort(model, {"x": x}), run_ort(out, {"x": x})
    for name in ("a", "b", "c"):
        np.testing.assert_array_equal(ref[name], got[name])
