"""Hostile .tm files: no payload runs a line through any entry point (load_traced,
tm2onnx.export(path), CLI export, validate --tm, validate MODEL.tm); a sentinel file that each
payload would create must not appear. Every model the project ships still loads without flags."""

from __future__ import annotations

import importlib
import os
import pickle
import subprocess
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from tm2onnx.cli import main

MODELS = sorted(Path(__file__).resolve().parents[1].joinpath("models").glob("*.tm"))


class Reduce:
    """Pickles as `func(*args)`: what a hostile pickle runs at load time."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _touch(sentinel: Path) -> str:
    return f"open({str(sentinel)!r}, 'w').close()"


def _traced(megengine):
    import megengine.functional as F
    import megengine.module as M
    import megengine.traced_module as tm

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.conv = M.Conv2d(3, 4, 1)

        def forward(self, x):
            return F.relu(self.conv(x))

    net = Net()
    net.eval()
    return tm.trace_module(net, megengine.Tensor(np.ones((1, 3, 4, 4), "float32")))


def _payloads(megengine, sentinel: Path) -> dict[str, bytes]:
    touch = _touch(sentinel)
    real = pickle.dumps(_traced(megengine))
    hidden = _traced(megengine)
    hidden.evil = Reduce(os.system, f"touch {sentinel}")  # pickled with the module's state
    # An attacker writes bytes directly; MegEngine's own pickler would refuse the foreign leaf.
    with mock.patch("megengine.traced_module.traced_module._check_obj_attr"):
        hidden = pickle.dumps(hidden)
    returns_model = Reduce(eval, f"({touch}, __import__('pickle').loads({real!r}))[1]")
    payloads = {
        "os.system": Reduce(os.system, f"touch {sentinel}"),
        "subprocess": Reduce(subprocess.call, ["touch", str(sentinel)]),
        "eval": Reduce(eval, touch),
        "exec": Reduce(exec, touch),
        "import": Reduce(importlib.import_module, "this"),
        "getattr": Reduce(getattr, Reduce(__import__, "os"), "system"),
        "in-traced-state": hidden,
        "returns-model": returns_model,
    }
    blobs = {name: obj if isinstance(obj, bytes) else pickle.dumps(obj)
             for name, obj in payloads.items()}
    blobs.update(_megengine_gadgets(megengine, sentinel))
    return blobs


def _megengine_gadgets(megengine, sentinel: Path) -> dict[str, bytes]:
    """Strings MegEngine itself imports and getattr()s while unpickling or running, objects
    that pose under a MegEngine name, and a numpy function that runs code."""
    from megengine.traced_module.expr import CallFunction, CallMethod
    from numpy.testing._private.utils import runstring

    def with_expr(kind, edit) -> bytes:
        traced = _traced(megengine)
        expr = next(e for e in traced.graph._exprs if isinstance(e, kind))
        edit(expr)
        return pickle.dumps(traced)

    def fake(module: str, qualname: str):
        def function():
            pass
        function.__module__, function.__qualname__ = module, qualname
        return function

    return {
        "func-os-system": with_expr(CallFunction,
                                    lambda e: setattr(e, "func", fake("os", "system"))),
        "func-via-reexport": with_expr(CallFunction, lambda e: setattr(
            e, "func", fake("megengine.functional.nn", "np.save"))),
        "module-method": with_expr(CallMethod, lambda e: setattr(e, "method", "__setattr__")),
        "func-posing-class": _posing_function(megengine),
        "new-on-other-class": _tensor_new_on(megengine, np.ndarray),
        "numpy-runstring": pickle.dumps(Reduce(runstring, _touch(sentinel), {})),
    }


def _posing_function(megengine) -> bytes:
    """A CallFunction whose func is a class made by `type(name, bases, dict)` under
    megengine.functional.nn.relu's name: it passes a by-name check, computes something else."""
    from megengine.traced_module.expr import CallFunction

    posing = Reduce(type, "relu", (object,), {"__module__": "megengine.functional.nn",
                                              "__qualname__": "relu"})
    original = CallFunction.__getstate__
    with mock.patch.object(CallFunction, "__getstate__",
                           lambda self: {**original(self), "func": posing}):
        return pickle.dumps(_traced(megengine))


def _tensor_new_on(megengine, cls) -> bytes:
    """`mge.Tensor(x)` in forward is a traced `Tensor.__new__`; point it at another class."""
    import megengine.functional as F
    import megengine.module as M
    import megengine.traced_module as tm

    class Net(M.Module):
        def forward(self, x):
            return x + megengine.Tensor(F.arange(x.shape[1]))

    traced = tm.trace_module(Net(), megengine.Tensor(np.ones((2, 3), "float32")))
    new = next(e for e in traced.graph._exprs if getattr(e, "method", None) == "__new__")
    assert [value for _, value in new.const_val] == [megengine.Tensor]
    new.const_val = [(index, cls) for index, _ in new.const_val]
    leaf = new.arg_def.children_defs[0].children_defs[0]
    leaf.const_val, leaf.type = cls, (type(cls), *leaf.type[1:])
    return pickle.dumps(traced)


ENTRY_POINTS = {
    "load_traced": lambda path, out: __import__("tm2onnx").load_traced(path),
    "export(path)": lambda path, out: __import__("tm2onnx").export(str(path)),
    "cli export": lambda path, out: main(["export", str(path), "-o", str(out), "-q"]),
    "cli validate --tm": lambda path, out: main(["validate", str(out), "--tm", str(path), "-q"]),
    "cli validate .tm": lambda path, out: main(["validate", str(path), "-q"]),
}
PAYLOADS = ["os.system", "subprocess", "eval", "exec", "import", "getattr", "in-traced-state",
            "returns-model", "func-os-system", "func-via-reexport", "module-method",
            "func-posing-class", "new-on-other-class", "numpy-runstring"]


@pytest.fixture
def payload_files(megengine, tmp_path):
    sentinel = tmp_path / "PWNED"
    files = {}
    for name, blob in _payloads(megengine, sentinel).items():
        files[name] = tmp_path / f"{name}.tm"
        files[name].write_bytes(blob)
    # A valid ONNX file for `validate --tm` to compare against.
    import tm2onnx
    from tm2onnx.exporter import save_model

    save_model(tm2onnx.export(_traced(megengine)), tmp_path / "ok.onnx")
    return files, sentinel, tmp_path / "ok.onnx"


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_no_payload_runs_through_any_entry_point(payload_files, entry, capsys):
    from tm2onnx.loading import UnsafeLoadError

    files, sentinel, onnx_path = payload_files
    for name in PAYLOADS:
        if entry.startswith("cli"):
            assert ENTRY_POINTS[entry](files[name], onnx_path) == 2, name
            err = capsys.readouterr().err
            assert "refused" in err and "--unsafe-load" in err, (name, err)
            assert len(err.strip().splitlines()) == 1, err
        else:
            with pytest.raises(UnsafeLoadError, match="refused"):
                ENTRY_POINTS[entry](files[name], onnx_path)
        assert not sentinel.exists(), f"{name} ran through {entry}"


def test_payloads_are_real(payload_files):
    """The same files do run their payload with unsafe=True: the test above can fail."""
    from tm2onnx.loading import load_traced

    files, sentinel, _ = payload_files
    with pytest.raises(Exception):  # noqa: B017 - os.system returns an int, not a model
        load_traced(files["os.system"], unsafe=True)
    assert sentinel.exists()
    sentinel.unlink()
    assert load_traced(files["returns-model"], unsafe=True) is not None
    assert sentinel.exists()
    sentinel.unlink()
    with pytest.raises(Exception):  # noqa: B017 - runstring returns None, not a model
        load_traced(files["numpy-runstring"], unsafe=True)
    assert sentinel.exists()
    posing = load_traced(files["func-posing-class"], unsafe=True)
    funcs = [e.func for e in posing.graph._exprs if hasattr(e, "func")]
    assert funcs and all(isinstance(f, type) for f in funcs)  # relu replaced by a class


def test_refusal_names_the_global_and_the_flags(payload_files):
    from tm2onnx.loading import UnsafeLoadError, load_traced

    files, _, _ = payload_files
    with pytest.raises(UnsafeLoadError) as info:
        load_traced(files["os.system"])
    text = str(info.value)
    assert "'posix.system'" in text and "--trust-module" in text and "--unsafe-load" in text
    assert "\n" not in text


class Settings:
    """A custom (benign) class some users keep in a traced model's state."""

    def __init__(self, scale: float):
        self.scale = scale


def test_trust_module_allows_a_custom_class(megengine, tmp_path, capsys):
    import megengine.traced_module as tm

    from tm2onnx.loading import UnsafeLoadError, load_traced

    tm.register_supported_type(Settings)  # what MegEngine asks users to do for such leaves
    traced = _traced(megengine)
    traced.settings = Settings(2.0)
    path = tmp_path / "custom.tm"
    path.write_bytes(pickle.dumps(traced))
    with pytest.raises(UnsafeLoadError, match="tests.test_safety_loading.Settings"):
        load_traced(path)
    assert load_traced(path, allow_modules=["tests.test_safety_loading"]).settings.scale == 2.0
    out = tmp_path / "custom.onnx"
    assert main(["export", str(path), "-o", str(out), "-q"]) == 2
    assert main(["export", str(path), "-o", str(out), "-q",
                 "--trust-module", "tests.test_safety_loading"]) == 0
    assert main(["export", str(path), "-o", str(out), "-q", "--unsafe-load"]) == 0
    assert out.exists()


@pytest.mark.parametrize("path", MODELS, ids=[p.name for p in MODELS])
def test_every_shipped_model_loads_without_flags(megengine, path):
    from tm2onnx.loading import load_traced

    assert load_traced(path).graph.outputs


def test_mge_save_and_nested_and_qat_models_load(megengine, tmp_path):
    """Files saved with mge.save, a TracedModule inside a TracedModule, and a QAT model."""
    import megengine.module as M
    import megengine.quantization as Q
    import megengine.traced_module as tm

    from models.nets import pre_post_net
    from tm2onnx.loading import load_traced

    x = megengine.Tensor(np.ones((1, 14, 8, 8), "float32"))
    nested = tm.trace_module(pre_post_net(), x, x)

    class QNet(M.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.conv, self.dequant = M.QuantStub(), M.ConvBnRelu2d(3, 4, 3), \
                M.DequantStub()

        def forward(self, a):
            return self.dequant(self.conv(self.quant(a)))

    qnet = QNet()
    Q.quantize_qat(qnet, Q.ema_fakequant_qconfig)
    qnet.eval()
    qat = tm.trace_module(qnet, megengine.Tensor(np.ones((1, 3, 8, 8), "float32")))
    for name, traced in (("nested", nested), ("qat", qat)):
        pickle.dump(traced, (tmp_path / f"{name}.tm").open("wb"))
        megengine.save(traced, str(tmp_path / f"{name}.mge.tm"))
        for suffix in (".tm", ".mge.tm"):
            assert load_traced(tmp_path / f"{name}{suffix}").graph.outputs
