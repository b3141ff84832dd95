"""Never write what does not check, and never start on bad option values: invalid inputs are
refused with onnx.checker's message, invalid results are not written, out-of-range options,
mismatched models, Ctrl-C at start-up and a missing CUDA provider are one-line errors."""

from __future__ import annotations

import pytest

from tests.helpers import parse_model
from tm2onnx import cli
from tm2onnx.cli import main

GOOD = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,3,4,4] x) => (float[1,3,4,4] y) { y = Relu(x) }"""


def _write(path, model):
    path.write_bytes(model.SerializeToString())
    return path


def _invalid_inputs(tmp_path):
    good = parse_model(GOOD)
    dangling = good.__class__()
    dangling.ParseFromString(good.SerializeToString())
    dangling.graph.node[0].op_type, dangling.graph.node[0].input[:] = "Add", ["x", "z"]
    opset = parse_model(GOOD)
    opset.opset_import[0].version = 999
    ir = parse_model(GOOD)
    ir.ir_version = 99
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    return {"empty": empty, "dangling": _write(tmp_path / "dangling.onnx", dangling),
            "opset999": _write(tmp_path / "opset.onnx", opset),
            "ir99": _write(tmp_path / "ir.onnx", ir)}


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if "error" in line]
    assert len(errors) == 1 and not any("Traceback" in line for line in err), err
    return errors[0]


@pytest.mark.parametrize("case", ["empty", "dangling", "opset999", "ir99"])
def test_invalid_input_is_refused_up_front(tmp_path, capsys, case):
    source = _invalid_inputs(tmp_path)[case]
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(source), "-o", str(out), "--passes", "cleanup", "-q"]) == 2
    line = _one_line(capsys)
    assert "onnx.checker" in line or "empty" in line, line
    assert not out.exists()


def test_result_failing_the_checker_is_not_written(tmp_path, capsys):
    source = _write(tmp_path / "good.onnx", parse_model(GOOD))
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(source), "-o", str(out), "--passes", "wrap",
                 "--wrap-steps", "softmax:axis=9", "-q"]) == 2
    assert "'axis' must be in" in _one_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("option", [["--rtol", "nan"], ["--atol", "-1"], ["--atol", "inf"],
                                    ["--seed", "-1"], ["--seed", str(2**70)],
                                    ["--dim", "batch=0"], ["--dim", "batch=-3"],
                                    ["--dim", f"batch={10**12}"], ["--dim", "batch=x"],
                                    ["--fp16-min-params", "-5"]])
def test_option_values_are_checked_before_any_work(tmp_path, capsys, option):
    source = _write(tmp_path / "good.onnx", parse_model(GOOD))
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(source), "-o", str(out), "--passes", "cleanup", "--validate",
                 "-q", *option]) == 2
    line = _one_line(capsys)
    assert option[0] in line and "transform" not in line, line
    assert not out.exists()


def test_validate_rtol_nan_is_not_a_pass(tmp_path, capsys):
    source = _write(tmp_path / "good.onnx", parse_model(GOOD))
    assert main(["validate", str(source), "--against", str(source), "--rtol", "nan"]) == 2
    assert "--rtol" in _one_line(capsys)


def test_cuda_without_provider_is_an_option_error(tmp_path, capsys):
    import onnxruntime as ort

    assert "CUDAExecutionProvider" not in ort.get_available_providers()
    source = _write(tmp_path / "good.onnx", parse_model(GOOD))
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(source), "-o", str(out), "--passes", "cleanup", "--validate",
                 "--device", "cuda", "-q"]) == 2
    line = _one_line(capsys)
    assert "--device cuda" in line and "transform" not in line, line


def test_ctrl_c_during_start_up_exits_130_without_traceback(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert main(["transforms"]) == 130
    assert capsys.readouterr().err.strip() == "tm2onnx: interrupted"


def test_onnx_and_tm_with_different_input_counts(megengine, tmp_path, capsys):
    from pathlib import Path

    tm_file = Path(__file__).resolve().parents[1] / "models" / "pre_post.tm"  # two inputs
    source = _write(tmp_path / "one_input.onnx", parse_model(GOOD))
    assert main(["validate", str(source), "--tm", str(tm_file), "-q"]) == 2
    assert "has 1 inputs" in _one_line(capsys)


def test_protobuf_size_limit_is_one_line(tmp_path, capsys, monkeypatch):
    from google.protobuf.message import EncodeError

    import tm2onnx.fileio

    def too_big(*args, **kwargs):
        raise EncodeError("Failed to serialize proto")

    monkeypatch.setattr(tm2onnx.fileio, "save_onnx", too_big)
    source = _write(tmp_path / "good.onnx", parse_model(GOOD))
    assert main(["optimize", str(source), "-o", str(tmp_path / "o.onnx"), "--passes",
                 "cleanup", "-q"]) == 2
    assert "passes 2 GB" in _one_line(capsys)
