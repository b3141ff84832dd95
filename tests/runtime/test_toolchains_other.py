"""`validate --runtime tvm|mnn`: the test_toolchains models on TVM (Relax, llvm) and MNN,
compared with onnxruntime. Marked `toolchain`: run by `make test-toolchains` in .venv-tc,
where the extras are installed (not in CI: the wheels are large)."""

from __future__ import annotations

import json
import sys

import onnx
import pytest

from tests.helpers import parse_model
from tests.runtime.test_toolchains import F32, MODELS
from tm2onnx.cli import main

pytestmark = pytest.mark.toolchain
RUNTIMES = ("tvm", "mnn")


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_toolchain_runs_like_onnxruntime(runtime, name, tmp_path, capsys):
    path = tmp_path / f"{name}.onnx"
    onnx.save(parse_model(MODELS[name]), path)
    assert main(["validate", str(path), "--runtime", runtime, "--dim", "N=2", "--json",
                 "-q"]) == 0
    check = json.loads(capsys.readouterr().out)["toolchain"]
    assert check["runtime"] == runtime and check["passed"]
    outputs = check["versus"]["onnxruntime cpu"]["outputs"]
    assert [o["name"] for o in outputs] == [o.name for o in onnx.load(path).graph.output]
    for output in outputs:
        assert output["max_abs"] <= F32 * max(output["scale"], 1.0), output


@pytest.mark.parametrize(("runtime", "module"), [("tvm", "tvm"), ("mnn", "MNN")])
def test_missing_extra_names_it(runtime, module, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)
    path = tmp_path / "conv.onnx"
    onnx.save(parse_model(MODELS["conv"]), path)
    assert main(["validate", str(path), "--runtime", runtime, "--dim", "N=1"]) == 2
    assert f'pip install "tm2onnx[{runtime}]"' in capsys.readouterr().err
