"""`validate --runtime tflite|ncnn`: small ONNX graphs (conv, matmul, concat) through onnx2tf ->
LiteRT and pnnx -> ncnn, compared with onnxruntime in the ONNX layout; the missing-extra line;
what each refuses in one line. Marked `toolchain`: `make test-toolchains` runs it in .venv-tc
(Python 3.12: onnx2tf requires it; not in CI: tensorflow and torch wheels)."""

from __future__ import annotations

import json
import sys

import onnx
import pytest

from tests.helpers import parse_model
from tests.runtime.test_toolchains import HEADER, MODELS, _values
from tm2onnx.cli import main

pytestmark = pytest.mark.toolchain
RUNTIMES = ("tflite", "ncnn")
# f32 against onnxruntime, relative to max|ref| (at least 1): reassociated sums only.
F32 = 1e-5

GRAPHS = {
    "conv": MODELS["conv"],  # NCHW output (N, 8, 16, 16) and a rank-2 pooled one
    # MatMul + Softmax on a rank-3 tensor: onnx2tf must not move its last axis.
    "matmul": f'''{HEADER}
g (float[1, 16, 32] x) => (float[1, 16, 24] y)
   <float[32, 24] w = {{{_values(768, 7)}}}>
{{ m = MatMul (x, w)
   y = Softmax <axis = -1> (m) }}''',
    # Two branches concatenated on the channel axis (axis 1 in ONNX, 3 in TFLite's NHWC).
    "concat": f'''{HEADER}
g (float[1, 4, 8, 8] x) => (float[1, 12, 8, 8] y)
   <float[4, 4, 1, 1] w1 = {{{_values(16, 8)}}}, float[8, 4, 3, 3] w3 = {{{_values(288, 9)}}}>
{{ a = Conv (x, w1)
   b = Conv <pads = [1, 1, 1, 1]> (x, w3)
   c = Concat <axis = 1> (a, b)
   y = Relu (c) }}''',
    # Output (1, 8, 8, 8): channels-last and ONNX layout have the same shape (TFLite: read
    # through a Flatten, not guessed from the shape).
    "cube": f'''{HEADER}
g (float[1, 3, 8, 8] x) => (float[1, 8, 8, 8] y)
   <float[8, 3, 1, 1] w = {{{_values(24, 10)}}}>
{{ y = Conv (x, w) }}''',
}


def _validate(tmp_path, capsys, name: str, runtime: str, *flags: str) -> tuple[int, str]:
    path = tmp_path / f"{name}.onnx"
    onnx.save(parse_model(GRAPHS[name]), path)
    code = main(["validate", str(path), "--runtime", runtime, "--dim", "N=1", *flags])
    return code, capsys.readouterr()


def _error_line(err: str) -> str:
    """The error, which must be one line: the last one (progress lines come before it)."""
    last = err.strip().splitlines()[-1]
    assert last.startswith("tm2onnx validate: error: "), err
    return last


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", ["conv", "matmul", "concat", "cube"])
def test_mobile_toolchain_runs_like_onnxruntime(runtime, name, tmp_path, capsys):
    code, captured = _validate(tmp_path, capsys, name, runtime, "--json", "-q")
    assert code == 0, captured.err
    check = json.loads(captured.out)["toolchain"]
    assert check["runtime"] == runtime and check["passed"]
    outputs = check["versus"]["onnxruntime cpu"]["outputs"]
    graph = parse_model(GRAPHS[name]).graph
    assert [o["name"] for o in outputs] == [o.name for o in graph.output]
    for output in outputs:
        # Shapes as ONNX has them (a channels-last output would be a shape mismatch here).
        assert not output.get("problem"), output
        assert output["max_abs"] <= F32 * max(output["scale"], 1.0), output


@pytest.mark.parametrize(("runtime", "module"), [("tflite", "onnx2tf"), ("ncnn", "ncnn")])
def test_missing_extra_names_it(runtime, module, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    code, captured = _validate(tmp_path, capsys, "conv", runtime, "-q")  # -q: no progress line
    assert code == 2
    assert f'pip install "tm2onnx[{runtime}]"' in _error_line(captured.err)


def test_ncnn_refuses_batch_above_one(tmp_path, capsys):
    path = tmp_path / "conv.onnx"
    onnx.save(parse_model(GRAPHS["conv"]), path)
    assert main(["validate", str(path), "--runtime", "ncnn", "--dim", "N=2", "-q"]) == 2
    assert "ncnn runs batch-1 inputs" in _error_line(capsys.readouterr().err)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_mobile_toolchains_refuse_f16(runtime, tmp_path, capsys):
    code, captured = _validate(tmp_path, capsys, "conv", runtime, "--precision", "f16")
    assert code == 2
    assert f"--runtime {runtime} runs f32, not f16" in _error_line(captured.err)


def test_ncnn_names_the_layer_it_lacks(tmp_path, capsys):
    """A rank-5 Tile (HRNet's F.repeat upsampling): pnnx leaves torch.tile, which ncnn has no
    layer for; the one-line error names it instead of ncnn's bare load failure."""
    path = tmp_path / "tile.onnx"
    onnx.save(parse_model(f'''{HEADER}
g (float[1, 3, 4, 4] x) => (float[1, 3, 8, 4] y)
   <int64[1] ax = {{3}}, int64[5] reps = {{1, 1, 1, 2, 1}}, int64[4] shape = {{1, 3, 8, 4}}>
{{ u = Unsqueeze (x, ax)
   t = Tile (u, reps)
   y = Reshape (t, shape) }}'''), path)
    assert main(["validate", str(path), "--runtime", "ncnn", "-q"]) == 2
    err = capsys.readouterr().err
    assert "ncnn has no kernel for: torch.tile" in err and len(err.strip().splitlines()) == 1


def test_ncnn_feeds_blobs_in_graph_order(tmp_path):
    """pnnx's in0, in1 are positional: feeds given in another order still reach the right
    blob (two inputs of different shapes and values, concatenated). With no Conv to show a
    batch axis pnnx keeps all four axes in ncnn (batch_index 233): squeezing axis 0 anyway made
    the Concat join H (a (2, 8, 4) result)."""
    import numpy as np

    from tm2onnx.runtime.session import run_model
    from tm2onnx.runtime.toolchains import run_toolchain

    model = parse_model(f'''{HEADER}
g (float[1, 2, 4, 4] a, float[1, 3, 4, 4] b) => (float[1, 5, 4, 4] y)
{{ c = Concat <axis = 1> (a, b)
   y = Relu (c) }}''')
    path = tmp_path / "two.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    feeds = {"b": rng.uniform(-1, 1, (1, 3, 4, 4)).astype(np.float32),
             "a": rng.uniform(-1, 1, (1, 2, 4, 4)).astype(np.float32)}
    got = run_toolchain("ncnn", path, feeds)["y"]
    expected = run_model(model, feeds)["y"]
    assert got.shape == (1, 5, 4, 4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
