"""fold-shapes' linear-layer rewrite: Reshape([B, N, C] -> [B*N, C]) -> Gemm/MatMul -> Reshape back
becomes MatMul (+ Add) on the 3-D tensor; reshapes that do more than merge and restore the leading
dims stay. Tolerance: float32, rtol 1e-4 / atol 1e-5 (one reordered dot product)."""

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
    run_ort,
)
from tests.transforms.test_fold_shapes import model_of
from tm2onnx.transforms import run_pipeline


def linear(rng, gemm: str, back: str, batch: str = "2", extra: str = "") -> onnx.ModelProto:
    w = rng.normal(size=(8, 6)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    out_dims = ",".join(f"o{i}" for i in range(back.count(",") + 1))
    rank = back.count(",") + 1
    return model_of(f"""g (float[{batch},5,8] x) => (float[{out_dims}] y)
        <{init_text("w", w)}, {init_text("wt", np.ascontiguousarray(w.T))}, {init_text("b", b)},
         {init_text("b2", b.reshape(1, 6))}, int64[2] rows = {{-1, 8}},
         int64[{rank}] back = {back}> {{
        r = Reshape (x, rows)
        m = {gemm}
        y = Reshape (m, back)
        {extra}
    }}""")


def test_matmul_add_chain_between_reshapes_becomes_two_nodes(rng):
    """Reshape -> MatMul -> Add -> Reshape (what exporters write for nn.Linear on [B, N, C]):
    fold-shapes first fuses MatMul + Add into Gemm, then drops the reshapes."""
    w, b = rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    model = model_of(f"""g (float[2,5,8] x) => (float[2,5,6] y)
        <{init_text("w", w)}, {init_text("b", b)}, int64[2] rows = {{10, 8}},
         int64[3] back = {{2, 5, 6}}> {{
        r = Reshape (x, rows)
        m = MatMul (r, w)
        a = Add (m, b)
        y = Reshape (a, back)
    }}""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["MatMul", "Add"], report.details()
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_function(model, out, **FP32)


def test_symbolic_batch_with_a_computed_target(rng):
    """The back-Reshape's target built from Shape(x) (a dynamic-batch export): inference proves
    it is [B, 5, 6], so the Shape arithmetic goes too."""
    w, b = rng.normal(size=(8, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)
    model = model_of(f"""g (float[B,5,8] x) => (float[B,5,6] y)
        <{init_text("w", w)}, {init_text("b", b)}, int64[2] rows = {{-1, 8}},
         int64[1] zero = {{0}}, int64[2] tail = {{5, 6}}> {{
        r = Reshape (x, rows)
        m = Gemm (r, w, b)
        s = Shape (x)
        n = Gather <axis = 0> (s, zero)
        back = Concat <axis = 0> (n, tail)
        y = Reshape (m, back)
    }}""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["MatMul", "Add"], report.details()
    for batch in (1, 3):
        feeds = {"x": rng.normal(size=(batch, 5, 8)).astype(np.float32)}
        assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


def test_deploy_keeps_the_two_node_form(rng):
    model = linear(rng, "Gemm (r, w, b)", "{2, 5, 6}")
    out, _ = run_pipeline(model, ["deploy"])
    assert sorted(ops(out)) == ["Add", "MatMul"]
    assert_same_function(model, out, **FP32)


@pytest.mark.parametrize("gemm, expected", [
    ("Gemm (r, w, b)", ["Add", "MatMul"]),
    ("Gemm <transB = 1, alpha = 0.5, beta = 2.0> (r, wt, b2)", ["Add", "MatMul"]),
    ("Gemm (r, w)", ["MatMul"]),
    ("MatMul (r, w)", ["MatMul"]),
])
def test_reshape_gemm_reshape_becomes_a_batched_matmul(rng, gemm, expected):
    model = linear(rng, gemm, "{2, 5, 6}")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert sorted(ops(out)) == expected, report.details()
    matmul = next(n for n in out.graph.node if n.op_type == "MatMul")
    assert matmul.input[0] == "x"  # straight on the 3-D input: no Reshape left
    assert [o.name for o in out.graph.output] == ["y"]
    assert_same_function(model, out, **FP32)


def test_symbolic_batch_restored_by_the_one_wildcard(rng):
    model = linear(rng, "Gemm (r, w, b)", "{-1, 5, 6}", batch="B")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert sorted(ops(out)) == ["Add", "MatMul"], report.details()
    feeds = {"x": rng.normal(size=(3, 5, 8)).astype(np.float32)}
    assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


@pytest.mark.parametrize("back, batch", [
    ("{5, 2, 6}", "2"),       # regroups the rows: not x's leading dims
    ("{2, 5, 3, 2}", "2"),    # splits the output channels too
    ("{-1, 5, 6}", "B"),      # fine, but the rows Reshape below is shared
])
def test_reshapes_that_do_not_just_merge_and_restore_stay(rng, back, batch):
    extra = "z = Identity (r)" if batch == "B" else ""
    model = linear(rng, "Gemm (r, w, b)", back, batch=batch, extra=extra)
    if extra:
        model.graph.output.append(
            onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None))
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert "Gemm" in ops(out) and ops(out).count("Reshape") >= 1, report.details()
    feeds = {"x": rng.normal(size=(2, 5, 8)).astype(np.float32)}
    assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


def test_rows_reshape_that_splits_the_channel_stays(rng):
    # [2,5,8] -> [-1, 4] splits each channel vector in two; a [4, 6] weight then mixes halves.
    w = rng.normal(size=(4, 6)).astype(np.float32)
    model = model_of(f"""g (float[2,5,8] x) => (float[2,5,12] y)
        <{init_text("w", w)}, int64[2] rows = {{-1, 4}}, int64[3] back = {{2, 5, 12}}> {{
        r = Reshape (x, rows)
        m = MatMul (r, w)
        y = Reshape (m, back)
    }}""")
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["Reshape", "MatMul", "Reshape"], report.details()
    assert_same_function(model, out, **FP32)


def past_linear(rng, rows: str, back: str, x_shape: str = "2,6,8", k_in: int = 8,
                extra: str = "") -> onnx.ModelProto:
    w = rng.normal(size=(k_in, 6)).astype(np.float32)
    b = rng.normal(size=6).astype(np.float32)
    out_dims = ",".join(f"o{i}" for i in range(back.count(",") + 1))
    return model_of(f"""g (float[{x_shape}] x) => (float[{out_dims}] y)
        <{init_text("w", w)}, {init_text("b", b)}, int64[{rows.count(",") + 1}] rows = {rows},
         int64[{back.count(",") + 1}] back = {back}> {{
        r = Reshape (x, rows)
        m = MatMul (r, w)
        a = Add (m, b)
        y = Reshape (a, back)
        {extra}
    }}""")


@pytest.mark.parametrize("rows, back", [
    ("{3, 4, 8}", "{12, 2, 3}"),          # Swin: windows regrouped, then split into heads
    ("{2, 3, 2, 8}", "{72}"),              # flattened after
])
def test_reshape_keeping_the_last_dim_goes_past_matmul_add(rng, rows, back):
    model = past_linear(rng, rows, back)
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out) == ["MatMul", "Add", "Reshape"], report.details()
    assert next(n for n in out.graph.node if n.op_type == "MatMul").input[0] == "x"
    assert_same_function(model, out, **FP32)


@pytest.mark.parametrize("rows, back, x_shape, k_in", [
    ("{2, 12, 4}", "{2, 12, 6}", "2,6,8", 4),   # the Reshape splits the last dim
    ("{0, 3, 2, 8}", "{0, 36}", "N,6,8", 8),     # a 0 copies a leading dim of unknown size
])
def test_reshapes_that_change_rows_or_copy_dims_stay(rng, rows, back, x_shape, k_in):
    model = past_linear(rng, rows, back, x_shape, k_in)
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out).count("Reshape") == 2, report.details()
    x = rng.normal(size=[2 if d == "N" else int(d) for d in x_shape.split(",")])
    feeds = {"x": x.astype(np.float32)}
    assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)


def test_a_second_reader_of_the_product_keeps_the_reshape(rng):
    model = past_linear(rng, "{3, 4, 8}", "{12, 2, 3}", extra="z = Relu (a)")
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, None))
    out, [report] = run_pipeline(model, ["fold-shapes"])
    assert ops(out).count("Reshape") == 2, report.details()
    feeds = {"x": rng.normal(size=(2, 6, 8)).astype(np.float32)}
    assert_matches(run_ort(model, feeds), run_ort(out, feeds), **FP32)
