"""Export targets' rules on real ONNX graphs: each refusal names the rule and the offending
tensor or node, and the allowed cases (the same graph for another target) pass."""

from __future__ import annotations

import onnx
import pytest

from tests.helpers import parse_model
from tm2onnx.errors import Tm2OnnxError
from tm2onnx.guards import inferred_types
from tm2onnx.targets import RULES, TARGETS, check_target, get_target, table

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'

FLOAT64 = HEADER + """
agraph (float[2, 3] x) => (float[2, 3] y) {
    d = Cast<to = 11>(x)
    e = Mul(d, d)
    y = Cast<to = 1>(e)
}"""

RANK5 = HEADER + """
agraph (float[2, 8, 3, 3] x) => (float[2, 8, 3, 3] y) {
    s5 = Constant<value = int64[5] {2, 2, 4, 3, 3}>()
    s4 = Constant<value = int64[4] {2, 8, 3, 3}>()
    f = Reshape(x, s5)
    t = Transpose<perm = [0, 2, 1, 3, 4]>(f)
    y = Reshape(t, s4)
}"""

SCATTER = HEADER + """
agraph (float[6] x, float[2] v) => (float[6] y) {
    i = Constant<value = int64[2, 1] {0, 1}>()
    y = ScatterND(x, i, v)
}"""

INT_CLIP = HEADER + """
agraph (float[2, 3] x) => (float[2, 3] y) {
    s = Constant<value = float {0.1}>()
    z = Constant<value = uint8 {0}>()
    t = Constant<value = uint8 {127}>()
    q = QuantizeLinear(x, s, z)
    c = Clip(q, z, t)
    y = DequantizeLinear(c, s, z)
}"""

CASES = [  # (graph, rule, what the message names, targets that refuse it)
    pytest.param(FLOAT64, "no-float64", "d is float64", {"tensorrt", "tflite", "ncnn"},
                 id="float64"),
    pytest.param(RANK5, "max-rank-4", "f has rank 5", {"ncnn"}, id="rank5"),
    pytest.param(SCATTER, "no-scatter", "ScatterND", {"ncnn"}, id="scatter"),
    pytest.param(INT_CLIP, "no-integer-clip", "on an 8-bit integer", {"tflite"}, id="int-clip"),
]


@pytest.mark.parametrize("text, rule, named, refusing", CASES)
def test_target_rules(text, rule, named, refusing):
    model = parse_model(text)
    types = inferred_types(model)
    for name, target in TARGETS.items():
        if name in refusing:
            with pytest.raises(Tm2OnnxError, match=rule) as err:
                check_target(model, types, target, source="m.onnx")
            assert named in str(err.value) and "m.onnx" in str(err.value)
            assert "\n" not in str(err.value).strip()
        else:
            check_target(model, types, target, source="m.onnx")  # allowed there


def test_every_rule_is_used_and_documented():
    used = {rule for target in TARGETS.values() for rule in target.rules}
    assert used == set(RULES)
    text = table()
    assert all(f"`{name}`" in text for name in TARGETS)


def test_unknown_target_refused():
    with pytest.raises(Tm2OnnxError, match="target 'tpu' is not known.*choose one of generic"):
        get_target("tpu", "m.tm")


def test_clean_graph_passes_every_target():
    model = parse_model(HEADER + """
    agraph (float[2, 3] x) => (float[2, 3] y) { y = Relu(x) }""")
    for target in TARGETS.values():
        check_target(model, inferred_types(model), target)
    assert onnx.TensorProto.DOUBLE not in {v.tensor_type.elem_type
                                           for v in inferred_types(model).values()}


def test_readme_shows_the_registry_table():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "docs" / "targets.md").read_text()
    assert table() in readme, "docs/targets.md is out of date: paste tm2onnx.targets.table()"
