"""merge-parallel-matmuls (also in deploy, after absorb-const): MatMuls/Gemms reading one tensor with their
own constant weights become one MatMul on the concatenated weights and a Split (the bias Adds
merge too when every branch has one); shared weights, another K and unknown ranks are refused.
Tolerance: float32, tests.helpers.FP32 (a column of x @ [W1 W2] is the dot product of x @ W1)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.helpers import FP32, assert_matches, init_text, ops, parse_model, run_ort
from tm2onnx.runtime import random_feeds
from tm2onnx.transforms import run_pipeline


def assert_same_function(before: onnx.ModelProto, after: onnx.ModelProto, **tol: float) -> None:
    """Same outputs on seeded feeds, the symbolic batch B at 2."""
    feeds = random_feeds(before, seed=0, dims={"B": 2})
    assert_matches(run_ort(before, feeds), run_ort(after, feeds), **tol)


def _weights(rng, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    return [rng.normal(size=shape).astype(np.float32) for shape in shapes]


def qkv(rng, *, opset: int = 17, biases: str = "", x_type: str = "float[B,5,8]",
        share: bool = False, q_scale: bool = False) -> onnx.ModelProto:
    """x -> three projections q, k, v (graph outputs); `biases` names the branches that add a
    bias; `share` makes q and k read one weight; `q_scale` multiplies q by 0.125 (Whisper's
    q_proj(x) * head_dim**-0.5)."""
    wq, wk, wv = _weights(rng, (8, 4), (8, 4), (8, 6))
    bq, bk, bv = _weights(rng, (4,), (4,), (6,))
    lines = []
    for name, width in (("q", 4), ("k", 4), ("v", 6)):
        weight = "wq" if share and name == "k" else f"w{name}"
        if name in biases:
            lines.append(f"m{name} = MatMul (x, {weight})")
            lines.append(f"{name} = Add (b{name}, m{name})" if name == "k" else
                         f"{name} = Add (m{name}, b{name})")
        else:
            lines.append(f"{name} = MatMul (x, {weight})")
        if q_scale and name == "q":
            lines[-1] = lines[-1].replace("q = ", "uq = ", 1)
            lines.append("q = Mul (uq, scale)")
    body = "\n        ".join(lines)
    inits = ", ".join(init_text(n, a) for n, a in
                      (("wq", wq), ("wk", wk), ("wv", wv), ("bq", bq), ("bk", bk), ("bv", bv),
                       *([("scale", np.float32(0.125))] if q_scale else [])))
    return parse_model(f"""<ir_version: 8, opset_import: ["" : {opset}]>
    g ({x_type} x) => (float[B,5,4] q, float[B,5,4] k, float[B,5,6] v) <{inits}> {{
        {body}
    }}""", ir_version=8)


def _float_elements(model: onnx.ModelProto) -> int:
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT)


@pytest.mark.parametrize("name", ["merge-parallel-matmuls", "deploy"])
def test_qkv_becomes_one_matmul_and_a_split(rng, name):
    model = qkv(rng)
    out, reports = run_pipeline(model, [name])
    assert sorted(ops(out)) == ["MatMul", "Split"], [str(r) for r in reports]
    assert [o.name for o in out.graph.output] == ["q", "k", "v"]
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert list(split.output) == ["q", "k", "v"]
    assert _float_elements(out) == _float_elements(model) - 14  # the unused biases went
    assert_same_function(model, out, **FP32)


@pytest.mark.parametrize("name", ["merge-parallel-matmuls", "deploy"])
def test_bias_adds_merge_when_every_branch_has_one(rng, name):
    """3 MatMul + 3 Add (one Add written bias-first) -> MatMul, Add, Split."""
    model = qkv(rng, biases="qkv")
    out, reports = run_pipeline(model, [name])
    assert ops(out) == ["MatMul", "Add", "Split"], [str(r) for r in reports]
    assert [o.name for o in out.graph.output] == ["q", "k", "v"]
    assert _float_elements(out) == _float_elements(model)  # moved, not copied
    assert_same_function(model, out, **FP32)


@pytest.mark.parametrize("biases", ["", "qv"])
def test_deploy_folds_the_query_scale_before_merging(rng, biases):
    """deploy runs absorb-const before the merge: q's scale goes into its weights (and bias),
    then the three projections merge (Whisper-tiny 139 -> 135 nodes)."""
    model = qkv(rng, biases=biases, q_scale=True)
    out, reports = run_pipeline(model, ["deploy"])
    assert "Mul" not in ops(out) and ops(out).count("MatMul") == 1, [str(r) for r in reports]
    assert [o.name for o in out.graph.output] == ["q", "k", "v"]
    assert_same_function(model, out, **FP32)


def test_adds_stay_when_one_branch_has_no_bias(rng):
    model = qkv(rng, biases="qv")
    out, [report] = run_pipeline(model, ["merge-parallel-matmuls"])
    assert sorted(ops(out)) == ["Add", "Add", "MatMul", "Split"], report.details()
    assert_same_function(model, out, **FP32)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_sizes_follow_the_opset(rng, opset):
    """An attribute before opset 13, an input from 13 on (18: still an input, no num_outputs)."""
    model = qkv(rng, opset=opset)
    out, _ = run_pipeline(model, ["merge-parallel-matmuls"])
    split = next(n for n in out.graph.node if n.op_type == "Split")
    attrs = {a.name for a in split.attribute}
    assert attrs == ({"axis", "split"} if opset < 13 else {"axis"})
    assert len(split.input) == (1 if opset < 13 else 2)
    onnx.checker.check_model(out, full_check=True)
    assert_same_function(model, out, **FP32)


def test_gemms_with_transposed_weights_and_biases_merge(rng):
    w1, w2, b1, b2 = _weights(rng, (4, 8), (6, 8), (4,), (1, 6))
    model = parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[3,8] x) => (float[3,4] p, float[3,6] r)
        <{init_text("w1", w1)}, {init_text("w2", w2)}, {init_text("b1", b1)},
         {init_text("b2", b2)}> {{
        p = Gemm <transB = 1> (x, w1, b1)
        r = Gemm <transB = 1, alpha = 1.0> (x, w2, b2)
    }}""", ir_version=8)
    out, [report] = run_pipeline(model, ["merge-parallel-matmuls"])
    assert ops(out) == ["Gemm", "Split"], report.details()
    assert [o.name for o in out.graph.output] == ["p", "r"]
    assert_same_function(model, out, **FP32)


def test_weights_from_constant_nodes_merge_and_a_branch_read_on_stays_an_output(rng):
    w1, w2 = _weights(rng, (8, 3), (8, 2))
    model = parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[2,5,8] x) => (float[2,5,3] a, float[2,5,5] y) <{init_text("w2", w2)}> {{
        w1 = Constant <value = {init_text("v", w1)}> ()
        a = MatMul (x, w1)
        c = MatMul (x, w2)
        y = Concat <axis = -1> (a, c)
    }}""", ir_version=8)
    out, [report] = run_pipeline(model, ["merge-parallel-matmuls"])
    assert ops(out) == ["MatMul", "Split", "Concat"], report.details()
    assert [o.name for o in out.graph.output] == ["a", "y"]
    assert_same_function(model, out, **FP32)


def _assert_refused(model: onnx.ModelProto, reason: str) -> None:
    before = model.SerializeToString()
    out, [report] = run_pipeline(model, ["merge-parallel-matmuls"])
    assert not report.rewritten
    assert any(reason in why for _, why in report.skipped), report.details()
    assert out.SerializeToString() == before


def test_a_shared_weight_is_refused(rng):
    """q and k read one weight: concatenating would store it twice (v alone has no partner)."""
    _assert_refused(qkv(rng, share=True), "its weight has other readers")


def test_another_k_is_refused(rng):
    """Weights [8, 4] and [6, 4] on one x (an inconsistent model, but no crash: refused)."""
    w1, w2 = _weights(rng, (8, 4), (6, 4))
    model = parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[2,C] x) => (float[2,4] p, float[2,4] r)
        <{init_text("w1", w1)}, {init_text("w2", w2)}> {{
        p = MatMul (x, w1)
        r = MatMul (x, w2)
    }}""", ir_version=8)
    _assert_refused(model, "no other projection of its input has its K")


def test_an_input_of_unknown_rank_is_refused(rng):
    w1, w2 = _weights(rng, (8, 4), (8, 4))
    model = parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N] flat, int64[R] target) => (float p, float r)
        <{init_text("w1", w1)}, {init_text("w2", w2)}> {{
        x = Reshape (flat, target)
        p = MatMul (x, w1)
        r = MatMul (x, w2)
    }}""", ir_version=8)
    _assert_refused(model, "its input's rank is unknown")


def test_byte_identical_weights_are_refused(rng):
    """Two initializers with the same bytes: dedupe would share them, so merging would copy."""
    (w,) = _weights(rng, (8, 4))
    model = parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[2,8] x) => (float[2,4] p, float[2,4] r)
        <{init_text("w1", w)}, {init_text("w2", w)}> {{
        p = MatMul (x, w1)
        r = MatMul (x, w2)
    }}""", ir_version=8)
    _assert_refused(model, "byte-identical")
