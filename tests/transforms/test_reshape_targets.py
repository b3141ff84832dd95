"""Reshape targets read from data-dependent shapes become constants (0 = the input's own dim),
so per-level Shape -> Gather -> Unsqueeze -> Concat chains go and CSE merges the Reshapes; a
dim that is not provably the input's own at that position keeps its chain."""

from __future__ import annotations

import numpy as np
import onnx

from tests.helpers import FP32, assert_matches, ops, parse_model, run_ort, selection_feeds
from tm2onnx.transforms import run_pipeline

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def model_of(text: str) -> onnx.ModelProto:
    return parse_model(f"{HEADER}\n{text}", ir_version=8)


# Two "pyramid levels" reshape the same NonZero-selected rows, each computing its target from
# the selection's Shape (torchvision's detectors do this per FPN level).
DETECTOR_LIKE = """g (float[A,4] boxes, float[A] scores) => (float[K,2,2] y, float[K,2,2] z)
                   <float thr = {0.5}, int64[1] two = {2}, int64 zero = {0}, int64[1] ax = {0}> {
    m = Greater (scores, thr)
    nz = NonZero (m)
    idx = Squeeze (nz, ax)
    sel = Gather <axis = 0> (boxes, idx)
    s1 = Shape (sel)
    n1 = Gather <axis = 0> (s1, zero)
    u1 = Unsqueeze (n1, ax)
    t1 = Concat <axis = 0> (u1, two, two)
    y = Reshape (sel, t1)
    s2 = Shape (sel)
    n2 = Gather <axis = 0> (s2, zero)
    u2 = Unsqueeze (n2, ax)
    t2 = Concat <axis = 0> (u2, two, two)
    r2 = Reshape (sel, t2)
    z = Relu (r2)
}"""


def test_data_dependent_targets_become_constants_and_the_chains_merge():
    model = model_of(DETECTOR_LIKE)
    out, _ = run_pipeline(model, ["deploy"])
    assert "Shape" not in ops(out) and "Concat" not in ops(out), ops(out)
    assert ops(out).count("Reshape") == 1, ops(out)  # both levels' Reshapes are one now
    target = next(i for i in out.graph.initializer
                  if i.name == next(n for n in out.graph.node if n.op_type == "Reshape").input[1])
    assert onnx.numpy_helper.to_array(target).tolist() == [0, 2, 2]
    for selected in (0, 1, 5):  # none selected: 0 copies the empty dim, no division by it
        feeds = selection_feeds(selected)
        assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


def test_a_dim_of_another_position_or_tensor_keeps_its_chain():
    model = model_of("""g (float[N,M] x, float[P] other) => (float[M,N] y, float[P,Q] z)
                        <int64 zero = {0}, int64 one = {1}, int64[1] minus = {-1}, int64[1] ax = {0}> {
        s = Shape (x)
        n = Gather <axis = 0> (s, zero)
        m = Gather <axis = 0> (s, one)
        un = Unsqueeze (n, ax)
        um = Unsqueeze (m, ax)
        swapped = Concat <axis = 0> (um, un)
        y = Reshape (x, swapped)
        so = Shape (other)
        p = Gather <axis = 0> (so, zero)
        up = Unsqueeze (p, ax)
        from_other = Concat <axis = 0> (up, minus)
        z = Reshape (x, from_other)
    }""")
    out, _ = run_pipeline(model, ["deploy"])
    assert ops(out).count("Shape") == 2, ops(out)  # x's dims swapped; `other`'s P is not N
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    feeds = {"x": x, "other": np.zeros(2, np.float32)}
    assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


def test_allowzero_reshape_is_left_alone():
    model = model_of("""g (float[N,4] x) => (float[N,2,2] y)
                        <int64 zero = {0}, int64[2] tail = {2, 2}, int64[1] ax = {0}> {
        s = Shape (x)
        n = Gather <axis = 0> (s, zero)
        u = Unsqueeze (n, ax)
        t = Concat <axis = 0> (u, tail)
        y = Reshape <allowzero = 1> (x, t)
    }""")
    out, _ = run_pipeline(model, ["deploy"])
    assert "Shape" in ops(out), ops(out)  # with allowzero a 0 would mean an empty dim
    for rows in (0, 3):
        feeds = {"x": np.ones((rows, 4), np.float32)}
        assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


def test_a_copied_dim_of_known_size_lets_reshapes_merge():
    """Targets pinned while a size was symbolic keep 0s; once the size is inferred the 0 is that
    size, and Reshape(Reshape(x)) merges (it refuses to merge past a copied dim)."""
    model = model_of("""g (float[2,12] x) => (float[2,12,1] y)
                        <int64[3] split = {2, 3, 4}, int64[3] back = {0, 12, 1}> {
        r = Reshape (x, split)
        y = Reshape (r, back)
    }""")
    out, _ = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Reshape"], ops(out)
    x = np.arange(24, dtype=np.float32).reshape(2, 12)
    assert_matches(run_ort(model, {"x": x}), run_ort(out, {"x": x}), **FP32)
