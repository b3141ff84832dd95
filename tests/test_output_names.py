"""Issue 14: generated output names are unique by construction (an inner tensor holding the
name moves to a fresh one); only a name the user chose that is taken is refused."""

from __future__ import annotations

import pickle
from collections import Counter

import numpy as np
import onnx
import pytest

from tests.helpers import run_ort


def _names(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    return ([value.name for value in graph.input] + [init.name for init in graph.initializer]
            + [name for node in graph.node for name in node.output])


def test_generated_output_name_taken_by_an_inner_tensor(megengine):
    """On main: `output name 'conv_out_out' is already used in the graph — pick another
    --output-names entry`, though no name was given."""
    import tm2onnx
    from models.shape_patterns import build

    traced, arrays = build("name_clash")
    model = tm2onnx.export(traced)
    assert [o.name for o in model.graph.output] == ["conv_out_out", "mean_out"]
    repeated = [name for name, count in Counter(_names(model)).items() if count > 1]
    assert not repeated
    # the stem's inner `conv_out_out` (its child `out`'s output) moved to a fresh name
    convs = {node.input[0]: node.output[0] for node in model.graph.node if node.op_type == "Conv"}
    assert convs["conv_out_1"] == "conv_out_out"  # the returned conv_out's output
    assert convs["x"].startswith("conv_out_out_")  # the stem's, renamed
    got = run_ort(model, {"x": arrays[0]})
    reference = traced(megengine.Tensor(arrays[0]))
    for output, ref in zip(model.graph.output, reference, strict=True):
        np.testing.assert_allclose(got[output.name], ref.numpy(), rtol=1e-5, atol=1e-5)


def test_generated_output_name_through_the_cli(megengine, tmp_path):
    from models.shape_patterns import build
    from tm2onnx.cli import main

    source = tmp_path / "clash.tm"
    source.write_bytes(pickle.dumps(build("name_clash")[0]))
    target = tmp_path / "clash.onnx"
    assert main(["export", str(source), "-o", str(target), "--validate"]) == 0
    model = onnx.load(target)
    assert [o.name for o in model.graph.output] == ["conv_out_out", "mean_out"]


@pytest.mark.parametrize("taken", ["x", "conv_out_1"])
def test_user_output_name_already_used_is_refused(megengine, taken):
    """The graph input and an inner tensor's name: the user picked them, so they are refused."""
    import tm2onnx
    from models.shape_patterns import build
    from tm2onnx.errors import Tm2OnnxError

    traced, _ = build("name_clash")
    with pytest.raises(Tm2OnnxError, match=rf"output name '{taken}' is already used in the "
                                           r"graph — pick another --output-names entry"):
        tm2onnx.export(traced, output_names=["logits", taken])
