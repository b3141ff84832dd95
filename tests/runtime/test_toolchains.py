"""`validate --runtime openvino`: the same feeds on OpenVINO (f32 unless --precision), compared
with onnxruntime and the reference in one report; the missing-extra error; a toolchain that
differs fails the report. ONNX-side (OpenVINO installs with the `dev` extra); the --tm case
needs MegEngine."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest

from tests.helpers import parse_model
from tm2onnx.cli import main
from tm2onnx.runtime import toolchains

HEADER = '<ir_version: 8, opset_import: ["" : 17]>'


def _values(count: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return ", ".join(f"{v:.4f}" for v in rng.uniform(-0.5, 0.5, count))


MODELS = {
    # Conv -> Sigmoid and a global pool: two outputs, a symbolic batch (given by --dim).
    "conv": f'''{HEADER}
g (float[N, 3, 16, 16] x) => (float[N, 8, 16, 16] y, float[N, 8] p)
   <float[8, 3, 3, 3] w = {{{_values(216, 0)}}}, float[8] b = {{{_values(8, 1)}}}>
{{ c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
   y = Sigmoid (c)
   p = ReduceMean <axes = [2, 3], keepdims = 0> (c) }}''',
    # Attention core: MatMul, Softmax, Transpose, Gemm-free projection.
    "attention": f'''{HEADER}
g (float[2, 16, 32] x) => (float[2, 16, 32] y)
   <float[32, 32] wq = {{{_values(1024, 2)}}}, float[32, 32] wk = {{{_values(1024, 3)}}}>
{{ q = MatMul (x, wq)
   k = MatMul (x, wk)
   kt = Transpose <perm = [0, 2, 1]> (k)
   s = MatMul (q, kt)
   a = Softmax <axis = -1> (s)
   y = MatMul (a, x) }}''',
    # Integer input: an embedding lookup, then LayerNormalization.
    "embedding": f'''{HEADER}
g (int64[2, 7] ids) => (float[2, 7, 6] y)
   <float[10, 6] table = {{{_values(60, 4)}}}, float[6] gamma = {{{_values(6, 5)}}},
    float[6] beta = {{{_values(6, 6)}}}>
{{ e = Gather (table, ids)
   y = LayerNormalization <axis = -1> (e, gamma, beta) }}''',
}
# OpenVINO f32 against onnxruntime on these graphs: reassociated sums only.
F32 = 1e-5


def _save(tmp_path, name: str) -> str:
    path = tmp_path / f"{name}.onnx"
    onnx.save(parse_model(MODELS[name]), path)
    return str(path)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_openvino_runs_like_onnxruntime(name, tmp_path, capsys):
    path = _save(tmp_path, name)
    assert main(["validate", path, "--runtime", "openvino", "--dim", "N=2", "--runs", "2",
                 "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    check = report["toolchain"]
    assert check["runtime"] == "openvino" and check["precision"] == "f32" and check["passed"]
    assert list(check["versus"]) == ["onnxruntime cpu"]  # no reference: onnxruntime is one
    outputs = check["versus"]["onnxruntime cpu"]["outputs"]
    model = onnx.load(path)
    assert [o["name"] for o in outputs] == [o.name for o in model.graph.output]
    for output in outputs:
        assert output["passed"] and output["max_abs"] <= F32 * max(output["scale"], 1.0), output


def test_openvino_compiles_at_the_precision_asked(tmp_path):
    """The f32 hint is set explicitly: without it this CPU plugin picks bf16 on AVX-512 BF16."""
    import openvino as ov

    path = _save(tmp_path, "conv")
    f32 = toolchains.compile_openvino(path, "f32").get_property("INFERENCE_PRECISION_HINT")
    assert f32 == ov.Type.f32


def test_text_report_shows_the_toolchain_section(tmp_path, capsys):
    path = _save(tmp_path, "conv")
    assert main(["validate", path, "--against", path, "--runtime", "openvino",
                 "--dim", "N=1", "-q"]) == 0
    out = capsys.readouterr().out
    assert "openvino (f32) vs onnxruntime cpu:" in out
    assert f"openvino (f32) vs {path}:" in out  # and against the --against reference
    assert out.count("PASS: 2/2 outputs") == 3


def test_missing_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch):
    # None in sys.modules: `import openvino` fails and find_spec reports it absent, as in a
    # venv without the extra.
    monkeypatch.setitem(sys.modules, "openvino", None)
    path = _save(tmp_path, "conv")
    assert main(["validate", path, "--runtime", "openvino", "--dim", "N=1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # refused before any report
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 1 and 'pip install "tm2onnx[openvino]"' in errors[0], captured.err


def test_a_differing_toolchain_fails_the_report(tmp_path, capsys, monkeypatch):
    def off_by_one_percent(model_path, feeds, precision):
        return {k: v * 1.01 for k, v in toolchains.run_openvino(model_path, feeds, precision)
                .items()}

    fake = toolchains.Toolchain("skewed", "openvino", ("openvino",), ("f32",), off_by_one_percent)
    monkeypatch.setitem(toolchains.TOOLCHAINS, "skewed", fake)
    path = _save(tmp_path, "attention")
    assert main(["validate", path, "--runtime", "skewed", "--json", "-q"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["comparison"]["passed"] and not report["passed"]
    output = report["toolchain"]["versus"]["onnxruntime cpu"]["outputs"][0]
    assert not output["passed"] and output["max_rel"] == pytest.approx(0.01, rel=2e-2)


def test_precision_needs_a_runtime(tmp_path, capsys):
    assert main(["validate", _save(tmp_path, "conv"), "--precision", "bf16"]) == 2
    assert "--precision applies to --runtime only" in capsys.readouterr().err


def test_tm_reference_and_openvino_in_one_report(megengine, capsys):
    assert main(["validate", "models/conv_bn_relu.tm", "--runtime", "openvino", "--json",
                 "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    versus = report["toolchain"]["versus"]
    assert list(versus) == ["onnxruntime cpu", "MegEngine"]
    for comparison in versus.values():
        worst = comparison["outputs"][0]
        assert comparison["passed"] and worst["max_abs"] <= F32 * worst["scale"], worst
