"""wrap: pre/post ONNX models and built-in steps give the outputs numpy computes for the wrapped
pipeline, with the expected interface and prefixed names; bad specs raise TransformError."""

from __future__ import annotations

from pathlib import Path

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
from tm2onnx.errors import TransformError
from tm2onnx.transforms import run_pipeline
from tm2onnx.transforms.wrap import wrap_model

MODELS = Path(__file__).resolve().parents[2] / "models"
HEADER = '<ir_version: 10, opset_import: ["" : 17]>'
T = "float[1,14,8,8]"
# The guide's example: the main model is the identity, pre computes x*y and post x/y.
MAIN = parse_model(f"{HEADER} main ({T} x) => ({T} y) {{ y = Identity (x) }}")
PRE = parse_model(f"{HEADER} pre ({T} x, {T} y) => ({T} z) {{ [mul] z = Mul (x, y) }}")
POST = parse_model(f"{HEADER} post ({T} x, {T} y) => ({T} z) {{ [div] z = Div (x, y) }}")


def names(values) -> list[str]:
    return [v.name for v in values]


# A graph whose output is its input, no node (other exporters write these).
PASSTHROUGH = parse_model(f"{HEADER} main ({T} x) => ({T} x) {{ }}")


@pytest.mark.parametrize("main, nodes, outputs", [
    pytest.param(MAIN, [("pre/mul", "Mul"), ("", "Identity"), ("post/div", "Div")],
                 [["pre/z"], ["main/y"], ["z"]], id="identity-node"),
    pytest.param(PASSTHROUGH, [("pre/mul", "Mul"), ("post/div", "Div")], [["pre/z"], ["z"]],
                 id="no-node"),
])
def test_guide_example_pre_mul_post_div(rng, main, nodes, outputs):
    out = wrap_model(main, pre=PRE, post=POST)
    onnx.checker.check_model(out, full_check=True)
    assert names(out.graph.input) == ["x", "y"] and names(out.graph.output) == ["z"]
    assert [(n.name, n.op_type) for n in out.graph.node] == nodes
    # pre's z is internal now; the model's own y yields its name to the new input y.
    assert [list(n.output) for n in out.graph.node] == outputs
    x = rng.uniform(-1, 1, (1, 14, 8, 8)).astype(np.float32)
    y = rng.uniform(0.5, 2, (1, 14, 8, 8)).astype(np.float32)
    assert_matches({"z": x * y / y}, run_ort(out, {"x": x, "y": y}), **FP32)
    # The guide's own check: zeros times ones, divided by ones, is exactly the input.
    zeros, ones = np.zeros_like(x), np.ones_like(y)
    np.testing.assert_array_equal(run_ort(out, {"x": zeros, "y": ones})["z"], zeros)


def test_wrap_equals_the_guides_megengine_wrapper(megengine):
    # models/pre_post.tm is the guide's Net(pre, traced main, post) re-traced in MegEngine.
    import tm2onnx

    wrapped = wrap_model(tm2onnx.export(tm2onnx.load_traced(MODELS / "main.tm")),
                         pre=PRE, post=POST)
    guide = tm2onnx.export(tm2onnx.load_traced(MODELS / "pre_post.tm"))
    assert names(wrapped.graph.input) == names(guide.graph.input) == ["x", "y"]
    # tm2onnx gives the identity Main an Identity node, so its output has a name of its own.
    assert ops(wrapped) == ["Mul", "Identity", "Div"] and ops(guide) == ["Mul", "Div"]
    assert_same_function(guide, wrapped, **FP32, names={guide.graph.output[0].name: "z"})


def test_wrap_through_the_pipeline_with_paths_and_connect(tmp_path, rng):
    main = parse_model(f"""{HEADER} main (float[2,3] a, float[2,3] b) => (float[2,3] s,
        float[2,3] d) {{ s = Add (a, b)\n d = Sub (a, b) }}""")
    pre = parse_model(f"{HEADER} pre (float[2,3] b) => (float[2,3] t) {{ t = Neg (b) }}")
    post = parse_model(f"{HEADER} post (float[2,3] d, float[2,3] k) => (float[2,3] out) "
                       "{ out = Mul (d, k) }")
    onnx.save(pre, tmp_path / "pre.onnx")
    options = {"wrap": {"pre": str(tmp_path / "pre.onnx"), "post": post,
                            "connect": {"pre/t": "b", "d": "post/d"}}}
    out, [report] = run_pipeline(main, ["wrap"], options=options)
    assert names(out.graph.input) == ["b", "a", "k"]
    assert names(out.graph.output) == ["out", "s"]
    assert report.rewritten == ["pre model", "post model"]
    a, b, k = (rng.normal(size=(2, 3)).astype(np.float32) for _ in range(3))
    assert_matches({"out": (a + b) * k, "s": a - b},
                   run_ort(out, {"a": a, "b": b, "k": k}), **FP32)


def test_pre_model_at_another_opset_is_converted():
    pre = parse_model('<ir_version: 8, opset_import: ["" : 13]> pre (float[1,14,8,8] x) '
                      "=> (float[1,14,8,8] z) { z = Relu (x) }")
    out = wrap_model(MAIN, pre=pre)
    assert ops(out) == ["Relu", "Identity"] and out.opset_import[0].version == 17


WRAP_ERRORS = [
    pytest.param({"connect": {"pre/nope": "x"}, "pre": PRE}, "connect: no source 'pre/nope'",
                 id="unknown-connect-name"),
    pytest.param({"pre": PRE, "connect": {"y": "x"}}, "would feed the model to itself",
                 id="self-loop"),
    pytest.param({"pre": parse_model(f"{HEADER} p (int64[1,14,8,8] i) => (int64[1,14,8,8] o)"
                                      " { o = Identity (i) }")},
                 "cannot feed 'pre/o' to 'x': dtype int64 vs float32", id="dtype-mismatch"),
    pytest.param({"post": parse_model(f"{HEADER} p (float[1,3] i) => (float[1,3] o)"
                                       " { o = Relu (i) }")},
                 "shape [1, 14, 8, 8] vs [1, 3]", id="shape-mismatch"),
    pytest.param({"pre": PRE, "post": parse_model(f"{HEADER} p ({T} x, float[8] y) => ({T} z)"
                                                " { z = Mul (x, y) }")},
                 "inputs named 'y' differ: shape [1, 14, 8, 8] vs [8]", id="shared-input-shape"),
    pytest.param({"steps": ("resize:2",)}, "unknown step 'resize'", id="unknown-step"),
    pytest.param({"steps": ("scale:abc",)}, "could not convert string to float",
                 id="bad-number"),
    pytest.param({"steps": ("scale:1/0",)}, "division by zero", id="zero-denominator"),
    pytest.param({"steps": ("normalize:mean=1,2",)}, "needs std", id="missing-option"),
    pytest.param({"steps": ("softmax:dim=1",)}, "unknown option(s) dim", id="unknown-option"),
    pytest.param({"steps": ("normalize:mean=1,2,3;std=1,1,1",)},
                 "3 means for axis 1 of size 14", id="normalize-channels"),
    pytest.param({"steps": ("scale:2", "uint8")}, "'x' is uint8, not floating point",
                 id="steps-out-of-order"),
    pytest.param({"steps": ("nhwc:input=q",)}, "no graph input q", id="unknown-input"),
    pytest.param({}, "wrap needs pre, post or steps", id="nothing"),
]


@pytest.mark.parametrize("kwargs, message", WRAP_ERRORS)
def test_bad_specs_raise_transform_error(kwargs, message):
    with pytest.raises(TransformError) as caught:
        wrap_model(MAIN, **kwargs)
    assert message in str(caught.value)


def test_input_steps_in_data_flow_order(rng):
    model = parse_model(f"{HEADER} m (float[2,3,4,5] x) => (float[2,3,4,5] y) "
                        "{ y = Identity (x) }")
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    steps = ("uint8", "nhwc", "scale:1/255",
             "normalize:mean=0.485,0.456,0.406;std=0.229,0.224,0.225")
    out = wrap_model(model, steps=steps)
    onnx.checker.check_model(out, full_check=True)
    assert ops(out) == ["Cast", "Transpose", "Mul", "Sub", "Div", "Identity"]
    raw = out.graph.input[0].type.tensor_type
    assert raw.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in raw.shape.dim] == [2, 4, 5, 3]
    pixels = rng.integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
    scaled = pixels.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
    expected = (scaled - mean.astype(np.float32)[:, None, None]) / std.astype(
        np.float32)[:, None, None]
    assert_matches({"y": expected}, run_ort(out, {"x": pixels}), **FP32)


def logits_model(rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    w = rng.normal(size=(6, 10)).astype(np.float32)
    return parse_model(f"""{HEADER} m (float[4,6] x) => (float[4,10] logits)
        <{init_text("w", w)}> {{ logits = MatMul (x, w) }}"""), w


def softmax(v: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(v - v.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


OUTPUT_STEPS = [
    pytest.param(("softmax:axis=1",), lambda v: softmax(v, 1), id="softmax-axis-1"),
    pytest.param(("softmax:axis=0",), lambda v: softmax(v, 0), id="softmax-axis-0"),
    pytest.param(("argmax",), lambda v: v.argmax(-1), id="argmax"),
    pytest.param("softmax argmax:axis=1;keepdims=1",  # one string: space-separated steps
                 lambda v: softmax(v, -1).argmax(1)[:, None], id="softmax-then-argmax"),
]


@pytest.mark.parametrize("steps, reference", OUTPUT_STEPS)
def test_output_steps_match_numpy(rng, steps, reference):
    model, w = logits_model(rng)
    out = wrap_model(model, steps=steps)
    onnx.checker.check_model(out, full_check=True)
    assert names(out.graph.output) == ["logits"]
    op_of = {"softmax": "Softmax", "argmax": "ArgMax"}
    listed = steps.split() if isinstance(steps, str) else steps
    assert ops(out) == ["MatMul", *(op_of[s.split(":")[0]] for s in listed)]
    x = rng.normal(size=(4, 6)).astype(np.float32)
    got = run_ort(out, {"x": x})["logits"]
    expected = reference(x @ w)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert_matches({"logits": expected}, {"logits": got}, **FP32)
