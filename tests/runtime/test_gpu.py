"""CUDA: the same model on onnxruntime's CUDA provider against CPU, `--device auto`, bench and
localization on CUDA. Marked `gpu`: skipped cleanly where onnxruntime has no CUDA provider."""

from __future__ import annotations

import json

import onnx
import onnxruntime as ort
import pytest

from tests.helpers import parse_model
from tm2onnx.cli import main

pytestmark = pytest.mark.gpu

CONV = '''<ir_version: 10, opset_import: ["" : 17]>
g (float[2, 3, 32, 32] x) => (float[2, 8, 32, 32] y)
   <float[8, 3, 3, 3] w = {''' + ", ".join(str((i % 7) / 7 - 0.5) for i in range(216)) + '''}>
{ t = Conv <pads = [1, 1, 1, 1]> (x, w)
  y = Relu (t) }'''


@pytest.fixture
def conv_path(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(parse_model(CONV), path)
    return str(path)


def test_cuda_against_cpu_reference(conv_path, capsys):
    assert main(["validate", conv_path, "--against", conv_path, "--device", "cuda",
                 "--reference-device", "cpu", "--localize", "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cuda" and report["reference_device"] == "cpu"
    assert report["localization"]["first_divergence"] is None
    worst = report["comparison"]["outputs"][0]
    print(f"CUDA vs CPU: max_abs {worst['max_abs']:.3g}, needed atol {worst['needed_atol']:.3g}")


def test_auto_picks_cuda_and_bench_runs_there(conv_path, capsys):
    assert "CUDAExecutionProvider" in ort.get_available_providers()
    assert main(["validate", conv_path, "--against", conv_path, "--device", "auto", "-q"]) == 0
    assert "(onnxruntime cuda)" in capsys.readouterr().out
    assert main(["bench", conv_path, "--against", conv_path, "--device", "cuda", "--runs", "20",
                 "-q"]) == 0
    out = capsys.readouterr().out
    assert out.count("(onnxruntime CUDA)") == 2
    print(out)
