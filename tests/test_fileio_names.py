"""Issue 14: any legal file name can be written: the temp name beside it keeps within the
directory's NAME_MAX (its stem shortened on whole UTF-8 characters, with a hash of the name),
and stale temps of killed runs on such names are still found and removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.helpers import parse_model, run_ort
from tm2onnx.cli import main

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,4] x) => (float[1,4] y) {
    c = Constant<value = float[1] {2.0}>()
    t = Mul(x, c)
    y = Relu(t)
}"""
SUFFIX = ".onnx"


def _name(size: int, char: str) -> str:
    """A file name of exactly `size` UTF-8 bytes made of `char` (padded with 'a')."""
    width = len(char.encode())
    body = size - len(SUFFIX)
    return "a" * (body % width) + char * (body // width) + SUFFIX


NAMES = [pytest.param(_name(size, char), id=f"{size}-{label}")
         for size in (250, 255) for label, char in (("ascii", "m"), ("utf8-2", "é"),
                                                    ("utf8-3", "あ"))]


@pytest.fixture
def temp_names(monkeypatch) -> list[str]:
    """Names of the temp files renamed onto outputs (os.replace sees every one)."""
    seen: list[str] = []
    replace = os.replace

    def spy(source, target, *args, **kwargs):
        seen.append(Path(source).name)
        return replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", spy)
    return seen


def _dead_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("name", NAMES)
def test_optimize_writes_a_name_at_name_max(tmp_path, temp_names, name):
    """On main: `cannot write the output: File name too long`, exit 2."""
    assert len(name.encode()) in (250, 255)
    source = tmp_path / "in.onnx"
    source.write_bytes(parse_model(MODEL).SerializeToString())
    target = tmp_path / name
    assert main(["optimize", str(source), "-o", str(target), "--passes", "cleanup", "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.onnx", name])
    [temp] = temp_names
    assert len(temp.encode()) <= os.pathconf(tmp_path, "PC_NAME_MAX")
    assert temp.startswith(".") and ".tm2onnx-tmp-" in temp
    temp.encode("utf-8")  # whole characters only: no lone surrogate from a cut byte sequence
    x = np.asarray([[1.0, -2.0, 3.0, -4.0]], np.float32)
    got = run_ort(onnx.load(target), {"x": x})["y"]
    np.testing.assert_array_equal(got, [[2.0, 0.0, 6.0, 0.0]])


@pytest.mark.parametrize("name", [NAMES[1], NAMES[5]])  # 250 bytes of 'é', 255 of 'あ'
def test_export_writes_a_name_at_name_max(megengine, tmp_path, temp_names, name):
    import pickle

    import megengine as mge
    import megengine.traced_module as tm

    from models.nets import ConstScaleNet

    net = ConstScaleNet()
    net.eval()
    source = tmp_path / "net.tm"
    source.write_bytes(pickle.dumps(tm.trace_module(net, mge.Tensor(np.zeros((1, 3, 8, 8),
                                                                             np.float32)))))
    target = tmp_path / name
    assert main(["export", str(source), "-o", str(target), "--validate"]) == 0
    assert {op.op_type for op in onnx.load(target).graph.node} >= {"Conv"}
    assert all(len(temp.encode()) <= 255 for temp in temp_names)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["net.tm", name])


def test_temp_stem_is_the_name_when_it_fits_and_a_hashed_prefix_when_not(tmp_path):
    from tm2onnx.fileio import temp_stem

    assert temp_stem(tmp_path / "model.onnx") == "model.onnx"
    long_a, long_b = _name(250, "あ"), "b" + _name(250, "あ")[1:]
    stem = temp_stem(tmp_path / long_a)
    assert stem == temp_stem(tmp_path / long_a)  # the same every run: stale ones are found
    assert stem != temp_stem(tmp_path / long_b)  # and distinct for names that share a prefix
    prefix, _, digest = stem.rpartition("~")
    assert long_a.startswith(prefix) and len(digest) == 8
    assert len(f".{stem}.tm2onnx-tmp-{2**22}-0badf00d".encode()) <= 255


@pytest.mark.parametrize("name", [NAMES[0], NAMES[5]])
def test_stale_temps_of_long_names_are_removed(tmp_path, name):
    from tm2onnx.fileio import TEMP_MARK, temp_stem

    source = tmp_path / "in.onnx"
    source.write_bytes(parse_model(MODEL).SerializeToString())
    target = tmp_path / name
    other = tmp_path / ("z" + name[1:])  # another output sharing all but the first character
    dead = _dead_pid()
    stale = tmp_path / f".{temp_stem(target)}{TEMP_MARK}{dead}-0badf00d"
    not_ours = tmp_path / f".{temp_stem(other)}{TEMP_MARK}{dead}-0badf00d"
    for path in (stale, not_ours):
        path.write_bytes(b"half a model")
    assert main(["optimize", str(source), "-o", str(target), "--passes", "cleanup", "-q"]) == 0
    assert not stale.exists() and not_ours.exists() and target.exists()
