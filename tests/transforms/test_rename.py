"""rename: inputs, outputs and inner tensors get new names; clashes and unknown names raise
before anything changes."""

from __future__ import annotations

import re

import pytest

from tests.helpers import FP32, assert_same_function, parse_model
from tm2onnx.errors import TransformError
from tm2onnx.transforms import run_pipeline

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2,3] x) => (float[2,3] y) <float[3] c = {1, 2, 3}> {
    t = Add (x, c)
    y = Relu (t)
}"""


def test_renames_input_output_and_inner_tensor():
    model = parse_model(MODEL)
    mapping = {"x": "images", "y": "scores", "t": "shifted"}
    out, [report] = run_pipeline(model, ["rename"], options={"rename": {"mapping": mapping}})
    assert [i.name for i in out.graph.input] == ["images"]
    assert [o.name for o in out.graph.output] == ["scores"]
    assert list(out.graph.node[0].output) == ["shifted"] and len(report.rewritten) == 3
    renamed = parse_model(MODEL.replace("x", "images"))  # same feeds under the new input name
    assert_same_function(renamed, out, **FP32, names={"y": "scores"})


def test_swapping_two_names_is_allowed():
    model = parse_model(MODEL)
    out, _ = run_pipeline(model, ["rename"], options={"rename": {"mapping": {"t": "y", "y": "t"}}})
    assert [o.name for o in out.graph.output] == ["t"]


@pytest.mark.parametrize("mapping, message", [
    pytest.param({"t": "c"}, "rename failed (first step): new name(s) already used: 'c'",
                 id="taken"),
    pytest.param({"x": "a", "t": "a"}, "new name(s) already used: 'a'", id="twice"),
    pytest.param({"nope": "a"}, "no tensor named 'nope'", id="missing"),
    pytest.param({"x": ""}, "empty new name for 'x'", id="empty"),
])
def test_refuses_bad_mapping_and_changes_nothing(mapping, message):
    model = parse_model(MODEL)
    before = model.SerializeToString()
    with pytest.raises(TransformError, match=re.escape(message)):
        run_pipeline(model, ["rename"], options={"rename": {"mapping": mapping}})
    assert model.SerializeToString() == before
