"""fp16-linear and fp16: converted layers hold FLOAT16 initializers behind exactly the expected
Casts, graph I/O stays FLOAT, outputs match the float32 model at FP16 tolerance, and refusals
leave the model bytes unchanged.

FP16 (rtol 1e-2, atol 5e-2, the guide's atol) because weights and activations keep 11
significant bits (relative error 2^-11 ≈ 4.9e-4 each); a K-term dot product of unit-scale
values with weights scaled by 1/sqrt(K) then errs by about 1e-3, well inside it."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from tests.helpers import FP16, assert_same_function, init_text, ops, parse_model
from tm2onnx.errors import TransformError
from tm2onnx.transforms import run_pipeline

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'


def with_weights(text: str, **arrays: np.ndarray) -> onnx.ModelProto:
    """parse_model text whose graph inputs named in `arrays` become initializers (big weights
    written as text would take seconds to parse)."""
    model = onnx.parser.parse_model(text)
    kept = [i for i in model.graph.input if i.name not in arrays]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in arrays.items())
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def linear(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    return (rng.normal(size=(rows, cols)) / np.sqrt(cols)).astype(np.float32)


def vector(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.normal(size=size).astype(np.float32)


def dtypes(model: onnx.ModelProto) -> dict[str, int]:
    return {init.name: init.data_type for init in model.graph.initializer}


def io_types(model: onnx.ModelProto) -> list[int]:
    return [v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]]


def test_guide_example_converts_only_the_big_linear(rng):
    model = with_weights(f"""{HEADER}
    g (float[1,3] x, float[1024,3] w0, float[1024] b0, float[4096,1024] w1, float[4096] b1)
      => (float[1,4096] y) {{
        [linear_0] h = Gemm <transB=1> (x, w0, b0)
        [linear_1] y = Gemm <transB=1> (h, w1, b1)
    }}""", w0=linear(rng, 1024, 3), b0=vector(rng, 1024), w1=linear(rng, 4096, 1024),
        b1=vector(rng, 4096))
    out, [report] = run_pipeline(model, ["fp16-linear"])
    assert ops(out) == ["Gemm", "Cast", "Gemm", "Cast"]
    assert dtypes(out) == {"w0": TensorProto.FLOAT, "b0": TensorProto.FLOAT,
                           "w1": TensorProto.FLOAT16, "b1": TensorProto.FLOAT16}
    assert io_types(out) == io_types(model) == [TensorProto.FLOAT, TensorProto.FLOAT]
    assert report.rewritten == ["linear_1"]
    assert report.skipped == [("linear_0", "1024×3 = 3072 weights < min_params 102400")]
    assert_same_function(model, out, **FP16)


# (x shape, graph body, converted initializers, Casts); 64×64 weights with min_params=4096.
CHAINS = [
    pytest.param("3,64", "h = Gemm (x, w1, b1)\n y = Gemm (h, w2, b2)", {"w1", "b1", "w2", "b2"},
                 2, id="gemm-gemm-one-cast-pair"),
    pytest.param("2,3,64", "m = MatMul (x, w1)\n h = Add (m, b1)\n n = MatMul (h, w2)\n"
                 "y = Add (b2, n)", {"w1", "b1", "w2", "b2"}, 2, id="matmul-add-one-cast-pair"),
    # Ops between layers stay fp32 (the rule: only direct chains share a Cast pair).
    pytest.param("3,64", "h = Gemm (x, w1, b1)\n r = Relu (h)\n y = Gemm (r, w2, b2)",
                 {"w1", "b1", "w2", "b2"}, 4, id="relu-between-stays-fp32"),
    # One Cast in, shared by both readers of x; one Cast out per layer.
    pytest.param("3,64", "a = Gemm (x, w1, b1)\n c = Gemm (x, w2, b2)\n y = Add (a, c)",
                 {"w1", "b1", "w2", "b2"}, 3, id="fan-out-shares-input-cast"),
    pytest.param("3,64", "h = Gemm (x, w1, b1)\n y = Gemm (h, w1, b2)", {"w1", "b1", "b2"}, 2,
                 id="weight-tied-between-converted-layers"),
    pytest.param("3,64", "h = Gemm (x, w1, b1)\n y = Gemm (h, w2)", {"w1", "b1", "w2"}, 2,
                 id="gemm-without-bias"),
]


@pytest.mark.parametrize("shape, body, converted, casts", CHAINS)
def test_chains_share_cast_pairs(rng, shape, body, converted, casts):
    weights = {"w1": linear(rng, 64, 64), "b1": vector(rng, 64), "w2": linear(rng, 64, 64),
                   "b2": vector(rng, 64)}
    used = {name: weights[name] for name in sorted(set(re.findall(r"\b[wb][12]\b", body)))}
    decl = "".join(f", float{list(a.shape)} {name}" for name, a in used.items())
    model = with_weights(f"{HEADER} g (float[{shape}] x{decl}) => (float[{shape}] y) "
                         f"{{ {body} }}", **used)
    out, [report] = run_pipeline(model, ["fp16-linear"],
                                 options={"fp16-linear": {"min_params": 64 * 64}})
    assert {n for n, t in dtypes(out).items() if t == TensorProto.FLOAT16} == converted
    assert set(dtypes(out)) == converted  # no fp32 copy left behind
    assert ops(out).count("Cast") == casts and report.notes == [f"inserted {casts} Cast nodes"]
    assert io_types(out) == io_types(model)
    assert_same_function(model, out, **FP16)


def test_bias_shared_with_a_small_layer_is_copied(rng):
    model = with_weights(f"""{HEADER}
    g (float[3,64] x, float[64,64] w, float[64,4] v, float[64] b, float[4] c)
      => (float[3,64] y, float[3,4] z) {{
        [big] y = Gemm (x, w, b)
        [small] z = Gemm (x, v, c)
        [shares_b] t = Add (x, b)
    }}""", w=linear(rng, 64, 64), v=linear(rng, 64, 4), b=vector(rng, 64), c=vector(rng, 4))
    model.graph.output.append(onnx.helper.make_tensor_value_info("t", TensorProto.FLOAT, [3, 64]))
    out, [report] = run_pipeline(model, ["fp16-linear"], options={"fp16-linear": {
        "min_params": 1024}})
    assert report.rewritten == ["big"]
    assert dtypes(out) == {"w": TensorProto.FLOAT16, "v": TensorProto.FLOAT,
                           "b": TensorProto.FLOAT, "c": TensorProto.FLOAT,
                           "b_fp16": TensorProto.FLOAT16}
    assert_same_function(model, out, **FP16)


REFUSALS = [
    pytest.param("y = Gemm (x, w, b)", {"w_max": 7e4},
                 "w has |value| 7e+04 > 65504, beyond fp16 range", id="weight-overflow"),
    pytest.param("m = MatMul (x, w)\n y = Add (m, b)", {"b_max": -1e5},
                 "b has |value| 1e+05 > 65504, beyond fp16 range", id="bias-overflow"),
    pytest.param("h = Gemm (x, w, b)\n [scale] y = Mul (h, w)", {},
                 "weight w is shared with scale, which stays fp32", id="shared-initializer"),
]


@pytest.mark.parametrize("body, extreme, reason", REFUSALS)
def test_refusals_leave_model_unchanged(rng, body, extreme, reason):
    w, b = linear(rng, 64, 64), vector(rng, 64)
    w.flat[5] = extreme.get("w_max", w.flat[5])
    b[3] = extreme.get("b_max", b[3])
    model = with_weights(f"""{HEADER}
    g (float[64,64] x, float[64,64] w, float[64] b) => (float[64,64] y) {{ {body} }}""",
                         w=w, b=b)
    before = model.SerializeToString()
    out, [report] = run_pipeline(model, ["fp16-linear"], options={"fp16-linear": {
        "min_params": 1024}})
    assert [why for _, why in report.skipped] == [reason] and not report.rewritten
    assert out.SerializeToString() == before == model.SerializeToString()


def test_refuses_weight_given_as_graph_input():
    model = parse_model(f"""{HEADER}
    g (float[2,512] x, float[512,512] w) => (float[2,512] y) {{ [fc] y = MatMul (x, w) }}""")
    before = model.SerializeToString()
    out, [report] = run_pipeline(model, ["fp16-linear"])
    assert report.skipped == [("fc", "weight w is a graph input")]
    assert out.SerializeToString() == before


def conv_net(rng: np.random.Generator) -> onnx.ModelProto:
    inits = [init_text("w", linear(rng, 8, 27).reshape(8, 3, 3, 3)),
             init_text("s", rng.uniform(0.5, 2, 8).astype(np.float32)),
             init_text("b", vector(rng, 8)), init_text("mu", vector(rng, 8)),
             init_text("var", rng.uniform(0.5, 2, 8).astype(np.float32)),
             init_text("fc", linear(rng, 8, 4)), init_text("shape", np.array([2, 8], np.int64))]
    return parse_model(f"""{HEADER}
    g (float[2,3,8,8] x) => (float[2,4] y, float[2,4] p) <{", ".join(inits)}> {{
        c = Conv <pads=[1,1,1,1]> (x, w)
        n = BatchNormalization (c, s, b, mu, var)
        r = Relu (n)
        m = MaxPool <kernel_shape=[2,2], strides=[2,2]> (r)
        a = GlobalAveragePool (m)
        f = Reshape (a, shape)
        y = MatMul (f, fc)
        [softmax] p = Softmax (y)
    }}""")


def test_fp16_whole_graph_keeps_blocked_ops_and_io_in_fp32(rng):
    model = conv_net(rng)
    out, [report] = run_pipeline(model, ["fp16"])
    assert ops(out) == ["Cast", "Conv", "BatchNormalization", "Relu", "MaxPool",
                        "GlobalAveragePool", "Reshape", "MatMul", "Cast", "Softmax"]
    assert dtypes(out) == {name: TensorProto.FLOAT16 for name in ("w", "s", "b", "mu", "var",
                                                                  "fc")} | {"shape": 7}
    assert io_types(out) == io_types(model) == [TensorProto.FLOAT] * 3
    # y is a graph output and Softmax's input: one Cast back serves both.
    assert [o.name for o in out.graph.output] == ["y", "p"]
    assert report.skipped == [("softmax", "kept fp32: in the block list")]
    assert len(report.rewritten) == 7
    assert_same_function(model, out, **FP16)


def test_fp16_block_list_is_a_parameter(rng):
    model = conv_net(rng)
    out, _ = run_pipeline(model, ["fp16"], options={"fp16": {"block": ("Conv",)}})
    # The Conv stays fp32, so the input Cast moves after it; Softmax now runs in fp16.
    assert ops(out)[:3] == ["Conv", "Cast", "BatchNormalization"]
    assert ops(out).count("Cast") == 3  # after Conv, y back to fp32, p back to fp32
    assert dtypes(out)["w"] == TensorProto.FLOAT and dtypes(out)["fc"] == TensorProto.FLOAT16
    assert_same_function(model, out, **FP16)


def test_fp16_keeps_nodes_reading_out_of_range_constants(rng):
    model = parse_model(f"""{HEADER}
    g (float[4,5] x) => (float[4,5] y) <float big = {{1e5}}, float k = {{0.5}}> {{
        r = Relu (x)
        [up] u = Mul (r, big)
        [down] d = Div (u, big)
        s = Sigmoid (d)
        [pow] e = Pow (s, k)
        y = Mul (e, k)
    }}""")
    out, [report] = run_pipeline(model, ["fp16"])
    reason = "kept fp32: big has |value| 1e+05 > 65504, beyond fp16 range"
    assert report.skipped == [("up", reason), ("down", reason),
                              ("pow", "kept fp32: in the block list")]
    # k is read in fp32 by Pow and in fp16 by the last Mul: the fp16 reader gets a copy.
    assert dtypes(out) == {"big": TensorProto.FLOAT, "k": TensorProto.FLOAT,
                           "k_float16": TensorProto.FLOAT16}
    assert ops(out).count("Cast") == 6  # into Relu, Sigmoid, Mul; out of Relu, Sigmoid, Mul
    assert_same_function(model, out, **FP16)


FP16_REFUSALS = [
    pytest.param("y = Softmax (x)", ("Softmax->y", "kept fp32: in the block list"),
                 id="only-blocked-ops"),
    pytest.param("c = Greater (one, zero)\n y = If (c) <then_branch = t () => (float[4,5] o)"
                 " { o = Relu (x) }, else_branch = e () => (float[4,5] o) { o = Neg (x) }>",
                 ("If->y", "control-flow subgraphs (If/Loop/Scan) are not converted"),
                 id="control-flow"),
]


@pytest.mark.parametrize("body, skipped", FP16_REFUSALS)
def test_fp16_refusals_leave_model_unchanged(body, skipped):
    model = parse_model(f"{HEADER} g (float[4,5] x) => (float[4,5] y) "
                        f"<float one = {{1.0}}, float zero = {{0.0}}> {{ {body} }}")
    before = model.SerializeToString()
    out, [report] = run_pipeline(model, ["fp16"])
    assert report.skipped == [skipped] and not report.rewritten
    assert out.SerializeToString() == before


def test_fp16_keeps_ops_whose_output_type_is_an_attribute():
    model = parse_model(f"""{HEADER} g (float[2,2] x) => (float[2,2] y) {{
        s = Shape (x)
        f = Cast <to=1> (s)
        y = Mul (x, f)
    }}""")
    out, [report] = run_pipeline(model, ["fp16"])
    # Shape reads the fp16 x; the Cast's float32 output gets a Cast to fp16 for Mul.
    assert ops(out) == ["Cast", "Shape", "Cast", "Cast", "Mul", "Cast"]
    assert report.skipped == [("Cast->f", "kept fp32: Cast sets its output type by attribute")]
    assert_same_function(model, out, **FP16)


def test_fp16_rejects_unknown_block_ops(rng):
    with pytest.raises(TransformError, match="unknown op.*Softmx"):
        run_pipeline(conv_net(rng), ["fp16"], options={"fp16": {"block": "Softmx,Exp"}})
