"""`tm2onnx optimize` output conventions: the op-count table (text and --json), value_info,
--input-shape before folding, --opset/--target-ir for old runtimes, IR version kept."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.helpers import FP32, assert_matches, ops, parse_model, run_ort
from tm2onnx.cli import main

MODEL = """<ir_version: 8, opset_import: ["" : 17]>
g (float[N,3,4,4] x) => (float[N,48] y) <int64[1] zero = {0}, int64[1] minus = {-1}> {
    s = Shape (x)
    b = Gather <axis = 0> (s, zero)
    shp = Concat <axis = 0> (b, minus)
    i = Identity (x)
    r = Reshape (i, shp)
    y = Relu (r)
}"""


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "in.onnx"
    path.write_bytes(parse_model(MODEL, ir_version=8).SerializeToString())
    return path


def test_prints_the_op_count_table_and_writes_value_info(src, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(src), "-o", str(out), "--passes", "deploy", "-q"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split() == ["op", "before", "after"]
    assert table[-1].split() == ["total", "6", "2", "-4"]  # the batch is copied: 0 in the target
    assert ["Identity", "1", "0", "-1"] in [row.split() for row in table]
    model = onnx.load(out)
    assert model.ir_version == 8 and "Identity" not in ops(model)
    shaped = {v.name: v for v in model.graph.value_info}
    dims = [d.dim_param or d.dim_value for d in shaped["r"].type.tensor_type.shape.dim]
    assert dims == ["N", 48]  # symbolic N kept, written as value_info


def test_json_table_and_input_shape_binding(src, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    argv = ["optimize", str(src), "-o", str(out), "--passes", "deploy", "--json", "-q",
            "--input-shape", "x=2,3,4,4", "--validate"]
    assert main(argv) == 0
    table = json.loads(capsys.readouterr().out)
    assert table["nodes"] == {"before": 6, "after": 2}
    assert table["ops"]["Shape"] == {"before": 1, "after": 0}
    model = onnx.load(out)
    assert ops(model) == ["Reshape", "Relu"]
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    assert_matches(run_ort(parse_model(MODEL), {"x": x}), run_ort(model, {"x": x}), **FP32)


def test_opset_and_target_ir_for_old_runtimes(src, tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(src), "-o", str(out), "--passes", "deploy", "-q",
                 "--opset", "13", "--target-ir", "7"]) == 0
    model = onnx.load(out)
    assert (model.ir_version, model.opset_import[0].version) == (7, 13)
    onnx.checker.check_model(model, full_check=True)
    x = np.ones((1, 3, 4, 4), np.float32)
    assert_matches(run_ort(parse_model(MODEL), {"x": x}), run_ort(model, {"x": x}), **FP32)


@pytest.mark.parametrize("argv, message", [
    (["--target-ir", "6"], "--target-ir 6 is older than opset 17 allows"),
    (["--input-shape", "x=1,3"], "--input-shape x has rank 2"),
    (["--input-shape", "nope=1"], "names no graph input: nope"),
])
def test_bad_options_are_one_line_errors(src, tmp_path, capsys, argv, message):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(src), "-o", str(out), "--passes", "deploy", "-q", *argv]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert message in line and not out.exists()
