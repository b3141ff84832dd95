"""`validate` verdicts on ONNX models (no MegEngine): magnitude-scaled tolerance, index-aware
integer feeds, warnings that a comparison proves nothing, user inputs, runs, JSON, exit codes."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from tests.helpers import init_text, parse_model
from tm2onnx.cli import main
from tm2onnx.runtime import random_feeds
from tm2onnx.validate import against_onnx

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'


def _save(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    onnx.save(parse_model(text), path)
    return str(path)


def _scaled(offset: float) -> str:
    """y = x * 1e6 (+ offset): outputs up to 1e6, like the DeepLab/RepVGG heads."""
    body = "y = Mul (x, c)" if not offset else "t = Mul (x, c)\n y = Add (t, o)"
    return f'''{HEADER}
g (float[64, 64] x) => (float[64, 64] y) <float c = {{1000000.0}}, float o = {{{offset}}}>
{{ {body} }}'''


@pytest.fixture
def big_pair(tmp_path):
    return _save(tmp_path, "ref.onnx", _scaled(0)), _save(tmp_path, "got.onnx", _scaled(0.5))


def test_default_tolerance_scales_with_the_output(big_pair, capsys):
    ref, got = big_pair
    # 0.5 absolute on outputs up to 1e6 is 5e-7 relative to the output: a pass by default...
    assert main(["validate", got, "--against", ref, "-q"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "atol=0.0001*max|ref|" in out and "needed:   atol >= 0.49" in out
    # ...and a fail at an explicit absolute atol, where elements near zero carry the 0.5.
    assert main(["validate", got, "--against", ref, "--atol", "1e-4", "--no-localize",
                 "-q"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_api_report_is_truthy_prints_and_has_a_dict(big_pair):
    ref, got = (onnx.load(path) for path in big_pair)
    report = against_onnx(got, ref)
    assert report and "PASS" in str(report)
    data = report.to_dict()
    assert data["passed"] is True and data["comparison"]["outputs"][0]["name"] == "y"
    assert not against_onnx(got, ref, atol=1e-4, localize=False)


EMBEDDING = f'''{HEADER}
g (int64[1, 8] ids) => (float[1, 8, 4] y) <{init_text("table", np.arange(8, dtype=np.float32)
                                                      .reshape(2, 4))}>
{{ flat = Identity (ids)
   y = Gather <axis = 0> (table, flat) }}'''


def test_integer_feeds_stay_inside_the_table_they_index(tmp_path, capsys):
    model = parse_model(EMBEDDING)
    for seed in range(5):
        assert set(np.unique(random_feeds(model, seed=seed)["ids"])) <= {0, 1}
    path = _save(tmp_path, "emb.onnx", EMBEDDING)
    assert main(["validate", path, "--against", path, "-q"]) == 0
    assert "ids in [0, 2) (indexes 'table'" in capsys.readouterr().out


def test_runtime_failure_is_an_error_not_a_difference(tmp_path, capsys):
    path = _save(tmp_path, "emb.onnx", EMBEDDING)
    assert main(["validate", path, "--against", path, "--int-range", "0,100", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "onnxruntime failed to run" in err


CONSTANT = f'''{HEADER}
g (float[2, 3] x) => (float[2, 3] y) <float z = {{0.0}}> {{ y = Mul (x, z) }}'''
EMPTY = f'''{HEADER}
g (float[0, 3] x) => (float[0, 3] y) {{ y = Relu (x) }}'''


@pytest.mark.parametrize("text, warning", [(CONSTANT, "constant output"),
                                           (EMPTY, "empty output")], ids=["constant", "empty"])
def test_comparisons_that_prove_nothing_warn_and_fail_under_strict(tmp_path, capsys, text,
                                                                   warning):
    path = _save(tmp_path, "m.onnx", text)
    assert main(["validate", path, "--against", path, "-q"]) == 0
    assert f"WARNING: y: {warning}" in capsys.readouterr().out
    assert main(["validate", path, "--against", path, "--strict", "-q"]) == 1


RELU = f'''{HEADER}
g (float[1, 3] x) => (float[1, 3] y) {{ y = Relu (x) }}'''
SCORES = f'''{HEADER}
g (float[4, 5] x, float[4, 5] n) => (float[4, 5] y) {{ y = Add (x, n) }}'''


def test_inputs_from_npz_npy_and_batches(tmp_path, capsys):
    path = _save(tmp_path, "relu.onnx", RELU)
    data = np.arange(12, dtype=np.float32).reshape(4, 3) - 5
    np.savez(tmp_path / "named.npz", x=data)
    np.savez(tmp_path / "positional.npz", data)
    np.save(tmp_path / "x.npy", data)
    for spec in ("named.npz", "positional.npz", "x.npy"):
        assert main(["validate", path, "--against", path, "--inputs", str(tmp_path / spec),
                     "-q"]) == 0
        assert "4 samples" in capsys.readouterr().out
    np.savez(tmp_path / "zeros.npz", x=np.zeros((1, 3), np.float32))
    assert main(["validate", path, "--against", path, "--inputs",
                 str(tmp_path / "zeros.npz"), "--strict", "-q"]) == 1
    assert "WARNING: input x is all zeros" in capsys.readouterr().out


@pytest.mark.parametrize("arrays, message", [
    ({"z": np.zeros((1, 3), np.float32)}, "--inputs has ['z'], not inputs of the model"),
    ({"x": np.zeros((1, 4), np.float32)}, "input 'x' has shape [1, 4] — the model takes x"),
    ({"x": np.zeros((1, 3), np.float64)}, "input 'x' is float64 — the model takes x"),
    ({"arr_0": np.zeros((1, 3), np.float32), "arr_1": np.zeros((1, 3), np.float32)},
     "--inputs gives 2 arrays — the model takes 1"),
], ids=["name", "shape", "dtype", "count"])
def test_wrong_inputs_are_one_line_errors(tmp_path, capsys, arrays, message):
    path = _save(tmp_path, "relu.onnx", RELU)
    np.savez(tmp_path / "bad.npz", **arrays)
    assert main(["validate", path, "--against", path, "--inputs", str(tmp_path / "bad.npz"),
                 "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_runs_aggregate_worst_case_and_top1(tmp_path, capsys):
    ref = _save(tmp_path, "ref.onnx", SCORES)
    assert main(["validate", ref, "--against", ref, "--runs", "3", "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == 3 and report["source"] == "seeds 0..2"
    output = report["comparison"]["outputs"][0]
    assert output["top1"] == 1.0 and output["cosine"] == pytest.approx(1.0)
    assert report["device"] == "cpu" and report["localization"] is None


@pytest.mark.parametrize("argv, message", [
    (["--int-range", "5,1"], "--int-range '5,1' is empty"),
    (["--runs", "0"], "--runs must be at least 1"),
    (["--localize", "--no-localize"], "contradict"),
    (["--plot", "x.txt"], "--plot writes .png or .svg"),
    (["--inputs", "x.npz", "--runs", "2"], "--inputs gives the feeds"),
], ids=["int-range", "runs", "localize", "plot-suffix", "inputs-and-runs"])
def test_bad_options_exit_2(tmp_path, capsys, argv, message):
    path = _save(tmp_path, "relu.onnx", RELU)
    assert main(["validate", path, "--against", path, *argv, "-q"]) == 2
    assert message in capsys.readouterr().err


def test_plot_without_matplotlib_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as when not installed
    path = _save(tmp_path, "relu.onnx", RELU)
    assert main(["validate", path, "--against", path, "--plot", str(tmp_path / "e.png"),
                 "-q"]) == 2
    assert "--plot needs matplotlib — pip install 'tm2onnx[plot]'" in capsys.readouterr().err


def test_symbolic_dims_are_filled_with_one_and_said(tmp_path, capsys):
    """Polygraphy-style: an unsized symbolic dim runs as 1 and the report says so; --dim
    overrides; optimize --validate checks (and would refuse) before anything is written."""
    text = f'''{HEADER}
g (float[batch, seq, 3] x) => (float[batch, seq, 3] y) <float one = {{1.0}}>
{{ t = Mul (x, one)
   y = Relu (t) }}'''
    path = _save(tmp_path, "dyn.onnx", text)
    out = tmp_path / "o.onnx"
    assert main(["optimize", path, "-o", str(out), "--passes", "deploy", "--validate"]) == 0
    printed = capsys.readouterr().out
    assert "symbolic dims filled: batch=1, seq=1" in printed
    assert "inputs:   x [1, 1, 3] float32" in printed and out.is_file()
    assert main(["validate", path, "--against", str(out), "--dim", "batch=4"]) == 0
    printed = capsys.readouterr().out
    assert "x [4, 1, 3]" in printed and "filled: seq=1" in printed and "batch=1" not in printed
    report = against_onnx(onnx.load(out), onnx.load(path), dims={"batch": 2, "seq": 5})
    assert report and not report.filled_dims and report.feeds["x"][0] == (2, 5, 3)


def test_optimize_validate_writes_nothing_when_the_check_fails(tmp_path, monkeypatch):
    from tm2onnx import validate

    path = _save(tmp_path, "relu.onnx", RELU)
    out = tmp_path / "o.onnx"
    real = against_onnx(onnx.load(path), onnx.load(path))
    failing = dataclasses.replace(real, strict=True, warnings=("forced failure",))
    assert real and not failing
    monkeypatch.setattr(validate, "against_onnx", lambda *a, **k: failing)
    assert main(["optimize", path, "-o", str(out), "--passes", "cleanup", "--validate",
                 "-q"]) != 0
    assert not out.exists()


def test_onnx_only_paths_never_import_megengine(tmp_path):
    path = _save(tmp_path, "relu.onnx", RELU)
    script = (f"import sys; from tm2onnx.cli import main\n"
              f"assert main(['validate', {path!r}, '--against', {path!r}, '-q']) == 0\n"
              f"assert main(['bench', {path!r}, '--against', {path!r}, '--runs', '2', '-q']) == 0\n"
              f"assert 'megengine' not in sys.modules, 'MegEngine imported'\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_bench_times_models_interleaved_and_prints_ratios(tmp_path, capsys):
    path = _save(tmp_path, "relu.onnx", RELU)
    assert main(["bench", path, "--against", path, "--runs", "5", "--warmup", "1",
                 "--opt-level", "basic", "--threads", "1", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "interleaved" in lines[0] and "p99 ms" in lines[1]
    rows = lines[2:]
    assert len(rows) == 2 and rows[0].endswith("1.00x") and "(onnxruntime CPU)" in rows[0]
    assert main(["bench", path, "--runs", "0", "-q"]) == 2


def test_device_auto_says_which_provider_ran(tmp_path, capsys):
    import onnxruntime as ort

    path = _save(tmp_path, "relu.onnx", RELU)
    expected = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
    assert main(["validate", path, "--against", path, "--device", "auto", "-q"]) == 0
    assert f"(onnxruntime {expected}) vs {path} ({expected})" in capsys.readouterr().out


def _chain(scale: float) -> str:
    return f'''{HEADER}
g (float[4, 8] x) => (float[4, 8] y) <float a = {{{scale}}}>
{{ t = Mul (x, a)
   u = Relu (t)
   y = Neg (u) }}'''


def test_plot_draws_the_error_along_the_graph(tmp_path, capsys):
    """With matplotlib (the `plot` extra) a PNG with the divergence marked; without it the
    one-line error of test_plot_without_matplotlib_is_one_line."""
    ref, got = _save(tmp_path, "ref.onnx", _chain(1.0)), _save(tmp_path, "got.onnx", _chain(1.1))
    target = tmp_path / "errors.png"
    argv = ["validate", got, "--against", ref, "--plot", str(target), "-q"]
    if importlib.util.find_spec("matplotlib") is None:
        assert main(argv) == 2
        assert "--plot needs matplotlib" in capsys.readouterr().err
    else:
        assert main(argv) == 1
        assert "first divergence: tensor 't'" in capsys.readouterr().out
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_localize_matches_outputs_by_position_when_names_differ():
    from tm2onnx.runtime import localize

    renamed = parse_model(f'''{HEADER}
g (float[4, 8] x) => (float[4, 8] z) <float a = {{1.1}}>
{{ t2 = Mul (x, a)
   u2 = Relu (t2)
   z = Neg (u2) }}''')
    found = localize(renamed, parse_model(_chain(1.0)))
    assert [t.name for t in found.tensors] == ["z"]  # no intermediate shares a name
    assert found.first.name == "z" and found.first.op == "Neg" and not found
    same = localize(parse_model(_chain(1.0)), parse_model(_chain(1.0)))
    assert same and "every matched tensor within tolerance" in str(same)


def test_correct_fuse_conv_bn_on_huge_outputs_is_not_blamed(tmp_path, capsys):
    """RepVGG/DeepLab-like magnitudes (~1e6): folding BN reorders fp32 rounding by ~0.1
    absolute, far below the output's precision; the old fixed atol 1e-4 blamed the fold."""
    rng = np.random.default_rng(0)
    weights = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 1e5,
               "s": rng.uniform(0.5, 2, 4).astype(np.float32),
               "b": rng.standard_normal(4).astype(np.float32) * 1e5,
               "m": rng.standard_normal(4).astype(np.float32) * 1e5,
               "v": rng.uniform(0.5, 2, 4).astype(np.float32)}
    inits = ", ".join(init_text(name, value) for name, value in weights.items())
    path = _save(tmp_path, "huge.onnx", f'''{HEADER}
g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) <{inits}>
{{ t = Conv <pads = [1, 1, 1, 1]> (x, w)
   y = BatchNormalization <epsilon = 0.001> (t, s, b, m, v) }}''')
    out = str(tmp_path / "lean.onnx")
    assert main(["optimize", path, "-o", out, "--passes", "deploy", "--validate", "-q"]) == 0
    assert "PASS" in capsys.readouterr().out
    # a fixed absolute atol is far too strict at this magnitude (the error is real fp32
    # rounding, ~1e-7 of the output): it fails, and points at the folded Conv
    assert main(["validate", out, "--against", path, "--atol", "1e-4", "--rtol", "0",
                 "-q"]) == 1
    text = capsys.readouterr().out
    assert "tensor 'y'" in text and "ONNX node:  (unnamed) (Conv)" in text


def test_json_report_carries_the_localization(tmp_path, capsys):
    ref, got = _save(tmp_path, "ref.onnx", _chain(1.0)), _save(tmp_path, "got.onnx", _chain(1.1))
    assert main(["validate", got, "--against", ref, "--json", "-q"]) == 1
    report = json.loads(capsys.readouterr().out,
                        parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    assert report["passed"] is False and report["comparison"]["outputs"][0]["passed"] is False
    first = report["localization"]["first_divergence"]
    assert first["tensor"] == "t" and first["op"] == "Mul"
    assert first["inputs"][0]["name"] == "x" and first["error"]["max_rel"] == "nan"
    assert [t["tensor"] for t in report["localization"]["tensors"]] == ["t", "u", "y"]


def test_device_cuda_without_its_provider_is_one_line(tmp_path, capsys):
    import onnxruntime as ort

    path = _save(tmp_path, "relu.onnx", RELU)
    code = main(["validate", path, "--against", path, "--device", "cuda", "-q"])
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert code == 0 and "(onnxruntime cuda)" in capsys.readouterr().out
    else:
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "no CUDAExecutionProvider" in err
