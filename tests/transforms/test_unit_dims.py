"""fold-shapes' unit-dim rewrites: a Transpose moving only size-1 dims merges into a neighbouring
Reshape, and a unit-dim Reshape between Transposes moves ahead so the Transposes merge (the
torch MultiheadAttention export's patterns); everything else stays."""

from __future__ import annotations

import numpy as np

from tests.helpers import FP32, assert_same_function, ops, parse_model, run_ort
from tm2onnx.transforms import run_pipeline

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def model_of(text: str):
    return parse_model(f"{HEADER}\n{text}", ir_version=8)


def test_unit_moving_transpose_merges_into_the_reshape_before_it():
    # torch MHA's out-projection: [197,768] -> [197,1,768] -> perm [1,0,2] = [1,197,768].
    model = model_of("""g (float[6,8] x) => (float[1,6,8] y) <int64[3] s = {6, 1, 8}> {
        r = Reshape (x, s)
        y = Transpose <perm = [1, 0, 2]> (r)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Reshape"], report.details()
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_function(model, out, **FP32)


def test_transpose_of_non_unit_dims_or_without_a_reshape_stays():
    model = model_of("""g (float[12,8] x, float[6,1,8] u) => (float[2,6,8] y, float[1,6,8] z)
                          <int64[3] s = {6, 2, 8}> {
        r = Reshape (x, s)
        y = Transpose <perm = [1, 0, 2]> (r)
        z = Transpose <perm = [1, 0, 2]> (u)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    # y really reorders (2 and 6 swap); z moves only a unit dim but no Reshape absorbs it.
    assert sorted(ops(out)) == ["Reshape", "Transpose", "Transpose"], report.details()
    assert_same_function(model, out, **FP32)


def test_unit_reshape_between_transposes_moves_ahead_and_they_merge():
    # torch MHA's key path: [197,12,64] -T-> [12,197,64] -R-> [1,12,197,64] -T(0,1,3,2)->.
    model = model_of("""g (float[5,3,4] x) => (float[1,3,4,5] y) <int64[4] s = {1, 3, 5, 4}> {
        t = Transpose <perm = [1, 0, 2]> (x)
        r = Reshape (t, s)
        y = Transpose <perm = [0, 1, 3, 2]> (r)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Reshape", "Transpose"], report.details()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 4)).astype(np.float32)
    # Exact: only data movement, so bit-equal, and a distinct value per element.
    np.testing.assert_array_equal(run_ort(model, {"x": x})["y"], run_ort(out, {"x": x})["y"])


def test_reshape_that_merges_real_dims_between_transposes_stays():
    model = model_of("""g (float[5,3,4] x) => (float[1,12,5] y) <int64[3] s = {1, 5, 12}> {
        u = Transpose <perm = [1, 0, 2]> (x)
        ru = Reshape (u, s)
        y = Transpose <perm = [0, 2, 1]> (ru)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    # [3,5,4] -> [1,5,12] joins 3 and 4 across the swapped axes: not a unit-dim reshape.
    assert ops(out) == ["Transpose", "Reshape", "Transpose"], report.details()
    assert_same_function(model, out, **FP32)


def test_window_partition_split_moves_ahead_even_behind_a_zero_pad():
    # EfficientViT's window split: NCHW -> NHWC -> (zero Pad) -> [1,2,7,2,7,C] -> swap -> ...
    model = model_of("""g (float[1,3,4,6] x) => (float[1,2,2,2,3,3] y)
                          <int64[6] s = {1, 2, 2, 2, 3, 3}, int64[8] pads = {0,0,0,0,0,0,0,0}> {
        t = Transpose <perm = [0, 2, 3, 1]> (x)
        p = Pad (t, pads)
        r = Reshape (p, s)
        y = Transpose <perm = [0, 1, 3, 2, 4, 5]> (r)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Reshape", "Transpose"], report.details()
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 6)).astype(np.float32)
    np.testing.assert_array_equal(run_ort(model, {"x": x})["y"], run_ort(out, {"x": x})["y"])


def test_reshape_that_regroups_across_dims_between_transposes_stays():
    # [1,4,6,3] -> [1,2,12,3] mixes H and W (6 is not split into runs of 2 then 12).
    model = model_of("""g (float[1,3,4,6] x) => (float[1,2,3,12] y) <int64[4] s = {1, 2, 12, 3}> {
        t = Transpose <perm = [0, 2, 3, 1]> (x)
        r = Reshape (t, s)
        y = Transpose <perm = [0, 1, 3, 2]> (r)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Transpose", "Reshape", "Transpose"], report.details()
    assert_same_function(model, out, **FP32)


def _model_at(text: str, opset: int):
    return parse_model(f'<ir_version: 8, opset_import: ["" : {opset}]>\n{text}', ir_version=8)


def test_unsqueeze_restoring_the_squeezed_unit_dims_undoes_the_squeeze():
    # Split into unit pieces -> Squeeze -> Unsqueeze -> Concat (torchvision's box decoding),
    # axes as inputs (opset 17, one negative) and as attributes (opset 11); rows may be 0.
    for opset, squeeze, unsqueeze in (
            (17, "Squeeze (p, one)", "Unsqueeze (q, minus)"),
            (11, "Squeeze <axes = [1]> (p)", "Unsqueeze <axes = [-1]> (q)")):
        model = _model_at(f"""g (float[N,2] x) => (float[N,2] y)
                              <int64[1] one = {{1}}, int64[1] minus = {{-1}}> {{
            p, s = Split <axis = 1> (x)
            q = {squeeze}
            u = {unsqueeze}
            r = Relu (s)
            y = Concat <axis = 1> (u, r)
        }}""", opset)
        out, [report] = run_pipeline(model, ["fold-shapes"])
        assert sorted(ops(out)) == ["Concat", "Relu", "Split"], report.details()
        for rows in (3, 0):
            feeds = {"x": np.random.default_rng(rows).normal(size=(rows, 2)).astype(np.float32)}
            np.testing.assert_allclose(run_ort(out, feeds)["y"], run_ort(model, feeds)["y"],
                                       **FP32)


def test_squeeze_pairs_that_change_the_tensor_stay():
    # Another axis restored; a dim not known to be 1; a Squeeze that is also a graph output.
    model = model_of("""g (float[3,1,1] x, float[3,M] w) => (float[1,3,1] a, float[3,M] b,
                                                            float[3,1] c, float[3,1,1] d)
                         <int64[1] one = {1}, int64[1] zero = {0}, int64[1] two = {2}> {
        xr = Relu (x)
        sa = Squeeze (xr, one)
        a = Unsqueeze (sa, zero)
        sb = Squeeze (w, one)
        b = Unsqueeze (sb, one)
        c = Squeeze (xr, two)
        d = Unsqueeze (c, two)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert sorted(ops(out)).count("Unsqueeze") == 3, report.details()
    feeds = {"x": np.ones((3, 1, 1), np.float32), "w": np.ones((3, 1), np.float32)}
    reference, got = run_ort(model, feeds), run_ort(out, feeds)
    for name in ("a", "b", "c", "d"):
        np.testing.assert_allclose(got[name], reference[name], **FP32)


def test_flatten_next_to_a_reshape_merges_into_it():
    # Symbolic rows (axis 1: rows copied as 0) and an empty batch; a static Flatten between
    # two Reshapes (axis 2 of a static shape) joins both.
    model = model_of("""g (float[N,3,4] x, float[2,3,4] v) => (float[N,6,2] y, float[1,24] z)
                        <int64[3] t = {0, 6, 2}, int64[3] s = {2, 3, 4}, int64[2] f = {1, -1}> {
        r = Relu (x)
        fl = Flatten <axis = 1> (r)
        y = Reshape (fl, t)
        rv = Relu (v)
        a = Reshape (rv, s)
        b = Flatten <axis = 2> (a)
        z = Reshape (b, f)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert sorted(ops(out)) == ["Relu", "Relu", "Reshape", "Reshape"], report.details()
    for rows in (2, 0):
        feeds = {"x": np.random.default_rng(rows).normal(size=(rows, 3, 4)).astype(np.float32),
                 "v": np.random.default_rng(7).normal(size=(2, 3, 4)).astype(np.float32)}
        reference, got = run_ort(model, feeds), run_ort(out, feeds)
        for name in ("y", "z"):
            np.testing.assert_allclose(got[name], reference[name], **FP32)


def test_flattens_and_reshapes_whose_copied_dims_differ_stay():
    # A 0 copying the Flatten's cols (not x's dim 1); symbolic rows of a Flatten on axis 2;
    # a 0 behind a -1 of the inner Reshape (its rows are not x's).
    model = model_of("""g (float[N,3,4] x, float[N,8] w) => (float[N,12] y, float[N,12] z,
                                                         float[M,2,2] u)
                        <int64[2] zz = {0, 0}, int64[2] t = {-1, 12}, int64[2] q = {-1, 4},
                         int64[3] p = {0, 2, 2}> {
        r = Relu (x)
        f1 = Flatten <axis = 1> (r)
        y = Reshape (f1, zz)
        f2 = Flatten <axis = 2> (r)
        z = Reshape (f2, t)
        rw = Relu (w)
        a = Reshape (rw, q)
        u = Reshape (a, p)
    }""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert sorted(ops(out)) == ["Flatten", "Flatten", "Relu", "Relu", "Reshape", "Reshape",
                                "Reshape", "Reshape"], report.details()
    feeds = {"x": np.ones((2, 3, 4), np.float32), "w": np.ones((2, 8), np.float32)}
    reference, got = run_ort(model, feeds), run_ort(out, feeds)
    for name in ("y", "z", "u"):
        np.testing.assert_allclose(got[name], reference[name], **FP32)
