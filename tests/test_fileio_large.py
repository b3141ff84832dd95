"""Models of any size: external data on request, kept when the input had it, automatic past
protobuf's 2 GB limit (the `slow` test: `pytest -m slow tests/test_fileio_large.py`)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.helpers import init_text, parse_model, run_ort
from tm2onnx.cli import main
from tm2onnx.external import PROTOBUF_LIMIT
from tm2onnx.fileio import load_onnx, save_onnx


def _affine_model(rng) -> onnx.ModelProto:
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    return parse_model(f"""<ir_version: 10, opset_import: ["" : 17]>
g (float[2,64] x) => (float[2,64] y)
<{init_text("w", weight)}, {init_text("b", bias)}> {{
    t = MatMul(x, w)
    u = Add(t, b)
    y = Relu(u)
}}""")


def _externals(model: onnx.ModelProto) -> list[str]:
    return [t.name for t in model.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL]


def test_external_data_on_request_and_kept_from_the_input(tmp_path, rng):
    model = _affine_model(rng)
    feeds = {"x": rng.standard_normal((2, 64)).astype(np.float32)}
    expected = run_ort(model, feeds)
    source = tmp_path / "in.onnx"
    source.write_bytes(model.SerializeToString())

    first = tmp_path / "ext.onnx"
    assert main(["optimize", str(source), "-o", str(first), "--passes", "cleanup",
                 "--external-data", "-q"]) == 0
    assert (tmp_path / "ext.onnx.data").stat().st_size == 64 * 64 * 4
    assert _externals(onnx.load(first, load_external_data=False)) == ["w"]

    kept = tmp_path / "kept.onnx"  # an input with external data is written back with it
    assert main(["optimize", str(first), "-o", str(kept), "--passes", "deploy", "-q"]) == 0
    assert _externals(onnx.load(kept, load_external_data=False))
    inline = tmp_path / "inline.onnx"
    assert main(["optimize", str(first), "-o", str(inline), "--passes", "deploy",
                 "--no-external-data", "-q"]) == 0
    assert not _externals(onnx.load(inline, load_external_data=False))
    assert not (tmp_path / "inline.onnx.data").exists()
    for path in (first, kept, inline):
        reloaded, _ = load_onnx(path)
        got = run_ort(reloaded, feeds)
        np.testing.assert_allclose(got["y"], expected["y"], rtol=1e-5, atol=1e-5)


def test_save_onnx_leaves_the_callers_model_as_it_was(tmp_path, rng):
    model = _affine_model(rng)
    before = model.SerializeToString()
    assert save_onnx(model, tmp_path / "m.onnx", external_data=True)
    assert model.SerializeToString() == before


def _huge_model(elements: int, count: int) -> onnx.ModelProto:
    # `count` float32 weights that together pass the limit: y = x + w0 + w1 + ...
    names = ["x"] + [f"t{i}" for i in range(count - 1)] + ["y"]
    nodes = [onnx.helper.make_node("Add", [names[i], f"w{i}"], [names[i + 1]])
             for i in range(count)]
    graph = onnx.helper.make_graph(
        nodes, "huge",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [elements])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [elements])])
    for index in range(count):
        weight = np.full(elements, index + 1, np.float32)
        weight[::4096] = np.arange(weight[::4096].size, dtype=np.float32)
        graph.initializer.append(numpy_helper.from_array(weight, f"w{index}"))
        del weight
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


# Runs the CLI and prints its peak resident memory in bytes on the last stdout line.
PEAK_RSS = ("import sys, resource; from tm2onnx.cli import main; rc = main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024); sys.exit(rc)")


@pytest.mark.slow
def test_model_past_2gb_round_trips_through_optimize(tmp_path):
    count = 8
    elements = PROTOBUF_LIMIT // (4 * count) + (4 << 20)  # count x 4 bytes x elements > 2 GiB
    weights = 4 * count * elements
    model = _huge_model(elements, count)
    source = tmp_path / "huge.onnx"
    assert save_onnx(model, source)  # automatic: too large to serialize inline
    del model
    out = tmp_path / "out.onnx"
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, "optimize", str(source), "-o",
                             str(out), "--passes", "cleanup", "-q"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    peak = int(result.stdout.split()[-1])
    print(f"optimize peak RSS {peak / 2**30:.2f} GiB for {weights / 2**30:.2f} GiB of weights")
    assert peak < 2.5 * weights, f"peak RSS {peak / 2**30:.2f} GiB for {weights / 2**30:.2f}"
    reloaded = onnx.load(out, load_external_data=False)
    assert sorted(_externals(reloaded)) == [f"w{i}" for i in range(count)]
    onnx.external_data_helper.load_external_data_for_model(reloaded, str(tmp_path))
    w1 = numpy_helper.to_array(next(t for t in reloaded.graph.initializer if t.name == "w1"))
    assert w1.size == elements and w1[1] == 2 and w1[4096] == 1


def test_export_with_external_data_validates_against_megengine(megengine, tmp_path, capsys):
    from pathlib import Path

    tm_file = Path(__file__).resolve().parents[1] / "models" / "big_linear.tm"
    out = tmp_path / "big.onnx"
    assert main(["export", str(tm_file), "-o", str(out), "--external-data", "-q"]) == 0
    assert _externals(onnx.load(out, load_external_data=False))
    assert (tmp_path / "big.onnx.data").stat().st_size > 0
    assert main(["validate", str(out), "--tm", str(tm_file), "-q"]) == 0
    assert "PASS" in capsys.readouterr().out


@pytest.mark.slow
def test_export_past_2gb_writes_external_data(megengine, tmp_path):
    import pickle

    import megengine.module as M
    import megengine.traced_module as tm

    class Huge(M.Module):
        def __init__(self, features: int, layers: int):
            super().__init__()
            self.layers = [M.Linear(features, features, bias=False) for _ in range(layers)]

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    features, layers = 12_000, 4  # four 12000x12000 float32 Linears: 2.3 GB of weights
    net = Huge(features, layers)
    net.eval()
    x = megengine.Tensor(np.ones((1, features), np.float32))
    source = tmp_path / "huge.tm"
    with source.open("wb") as handle:
        pickle.dump(tm.trace_module(net, x), handle)
    del net, x
    out = tmp_path / "huge.onnx"
    result = subprocess.run([sys.executable, "-c", PEAK_RSS, "export", str(source), "-o",
                             str(out), "-q"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    weights = 4 * features * features * layers
    print(f"export peak RSS {int(result.stdout.split()[-1]) / 2**30:.2f} GiB for "
          f"{weights / 2**30:.2f} GiB of weights")
    header = onnx.load(out, load_external_data=False)
    assert _externals(header) and out.stat().st_size < 1 << 20
    assert (tmp_path / "huge.onnx.data").stat().st_size == 4 * features * features * layers
