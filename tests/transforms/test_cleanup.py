"""cleanup: dead nodes go, identical constants merge, constant subgraphs fold (but never into
a tensor over the size limit), and a clean model comes back byte for byte."""

from __future__ import annotations

import numpy as np
import onnx

from tests.helpers import FP32, assert_same_function, ops, parse_model, run_ort
from tm2onnx.transforms import run_pipeline, run_transform, to_graph
from tm2onnx.transforms.cleanup import expanded_bytes

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'


def test_removes_dead_merges_duplicates_and_folds():
    model = parse_model(f"""{HEADER}
    g (float[2,3] x, float[2,3] unused) => (float[2,3] y)
      <float[3] a = {{1, 2, 3}}, float[3] b = {{1, 2, 3}}, float[3] k = {{0.5, 1, 2}}> {{
        dead = Neg (x)
        two = Add (k, k)
        u = Add (x, a)
        v = Mul (u, b)
        y = Mul (v, two)
    }}""")
    out, [report] = run_pipeline(model, ["cleanup"])
    assert ops(out) == ["Add", "Mul", "Mul"]
    assert sorted(i.name for i in out.graph.initializer) == ["a", "two"]
    assert [i.name for i in out.graph.input] == ["x", "unused"]  # the interface stays
    assert set(report.rewritten) == {"b", "Neg->dead", "Add->two"}
    assert_same_function(model, out, **FP32)


BIG = f"""{HEADER}
g (float[1,1000] x) => (float[1000,1000] y) <int64[2] shp = {{1000, 1000}}> {{
    big = ConstantOfShape <value = float[1] {{1.5}}> (shp)
    y = Add (x, big)
}}"""


def test_fold_refuses_to_inflate_past_the_limit():
    model = parse_model(BIG)
    out, [report] = run_pipeline(model, ["cleanup"])
    assert ops(out) == ["ConstantOfShape", "Add"] and not report.changed
    assert out.SerializeToString() == model.SerializeToString()


def test_fold_follows_a_raised_limit():
    model = parse_model(BIG)
    out, _ = run_pipeline(model, ["cleanup"], options={"cleanup": {"max_fold_bytes": 1 << 23}})
    assert ops(out) == ["Add"]
    assert_same_function(model, out, **FP32)


def test_expanded_bytes_of_tile_and_expand():
    model = parse_model(f"""{HEADER}
    g (float[2,3] x) => (float[8,6] y, float[4,2,3] z)
      <int64[2] reps = {{4, 2}}, int64[3] shp = {{4, 1, 1}}> {{
        y = Tile (x, reps)
        z = Expand (x, shp)
    }}""")
    graph = to_graph(model)
    assert [expanded_bytes(n) for n in graph.nodes] == [8 * 6 * 4, 4 * 2 * 3 * 4]


def test_clean_model_is_returned_unchanged():
    model = parse_model(f"""{HEADER}
    g (float[2,3] x) => (float[2,3] y) {{ y = Relu (x) }}""")
    out, [report] = run_pipeline(model, ["cleanup"])
    assert out.SerializeToString() == model.SerializeToString() and not report.changed
    assert not run_transform(to_graph(model), "cleanup").rewritten


def test_scalar_and_one_element_constants_stay_apart():
    # Regression: a rank-0 index and a rank-1 [1] index of the same value were merged (0-d
    # arrays turned 1-d while hashing), so Gather's output grew a dim: (2,1,4) for (2,4).
    model = parse_model(f"""{HEADER}
    g (float[2,3,4] x) => (float[2,4] y, float[2,1,4] z)
      <int64 i0 = {{1}}, int64[1] i1 = {{1}}, float one = {{1}}, float[1] one1 = {{1}}> {{
        g0 = Gather <axis = 1> (x, i0)
        y = Mul (g0, one)
        g1 = Gather <axis = 1> (x, i1)
        z = Mul (g1, one1)
    }}""")
    out, [report] = run_pipeline(model, ["cleanup"])
    onnx.checker.check_model(out, full_check=True)
    dims = {i.name: list(i.dims) for i in out.graph.initializer}
    assert dims == {"i0": [], "i1": [1], "one": [], "one1": [1]} and not report.rewritten
    got = run_ort(out, {"x": np.ones((2, 3, 4), np.float32)})
    assert got["y"].shape == (2, 4) and got["z"].shape == (2, 1, 4)
    assert_same_function(model, out, **FP32)


def test_equal_constants_of_one_shape_still_merge():
    model = parse_model(f"""{HEADER}
    g (float[2,3,4] x) => (float[2,4] y, float[2,4] z) <int64 i0 = {{1}}, int64 i1 = {{1}}> {{
        y = Gather <axis = 1> (x, i0)
        z = Gather <axis = 1> (x, i1)
    }}""")
    out, [report] = run_pipeline(model, ["cleanup"])
    assert [i.name for i in out.graph.initializer] == ["i0"] and report.rewritten == ["i1"]
    assert_same_function(model, out, **FP32)
