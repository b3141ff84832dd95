"""Runtimes other than onnxruntime that an exported file is deployed to (OpenVINO, TVM, MNN):
one registry, name -> runner(model_path, feeds, precision) -> outputs by
ONNX output name. Each runtime is an optional extra; none of this imports MegEngine."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tm2onnx.errors import RunError, Tm2OnnxError
from tm2onnx.runtime.session import _one_line

Feeds = dict[str, np.ndarray]
Runner = Callable[[Path, Feeds, str], Feeds]
PRECISIONS = ("f32", "f16", "bf16")


class MissingToolchain(Tm2OnnxError):
    """The runtime asked for is not installed: the message names the extra that installs it."""


@dataclass(frozen=True)
class Toolchain:
    name: str
    extra: str                  # pip install "tm2onnx[<extra>]"
    modules: tuple[str, ...]    # what must import for the runner to work
    precisions: tuple[str, ...]
    run: Runner
    note: str = ""              # what the extra needs beyond pip (e.g. a Python version)

    def missing(self) -> list[str]:
        return [name for name in self.modules if not _importable(name)]


TOOLCHAINS: dict[str, Toolchain] = {}


def toolchain(name: str, *, extra: str, modules: tuple[str, ...],
              precisions: tuple[str, ...] = ("f32",), note: str = "") -> Callable[[Runner], Runner]:
    """Register a runner under its `--runtime` name (once)."""
    def register(run: Runner) -> Runner:
        if name in TOOLCHAINS:
            raise ValueError(f"toolchain {name!r} registered twice")
        TOOLCHAINS[name] = Toolchain(name, extra, modules, precisions, run, note)
        return run
    return register


def require(name: str, precision: str = "f32") -> Toolchain:
    """The toolchain, installed and able to run at `precision`; else one line naming the fix."""
    if name not in TOOLCHAINS:
        raise Tm2OnnxError(f"unknown runtime {name!r}", hint=f"use one of {', '.join(TOOLCHAINS)}")
    found = TOOLCHAINS[name]
    if missing := found.missing():
        note = f" ({found.note})" if found.note else ""
        raise MissingToolchain(f"--runtime {name} needs {', '.join(missing)}, which is not "
                               f"installed", hint=f'pip install "tm2onnx[{found.extra}]"{note}')
    if precision not in found.precisions:
        raise Tm2OnnxError(f"--runtime {name} runs {'/'.join(found.precisions)}, not {precision}",
                           hint=f"use --precision {found.precisions[0]}")
    return found


def run_toolchain(name: str, model_path: str | Path, feeds: Feeds, precision: str = "f32"
                  ) -> Feeds:
    """Outputs by ONNX output name; a toolchain that cannot convert or run the model raises a
    RunError naming it (a refusal, never a silent mismatch)."""
    found = require(name, precision)
    try:
        with _stdout_to_stderr():
            return found.run(Path(model_path), feeds, precision)
    except Tm2OnnxError:
        raise
    except Exception as err:  # each toolchain raises its own unrelated types
        raise RunError(f"{name} cannot run {Path(model_path).name}: {_one_line(err)}",
                       hint="see docs/toolchains.md for what each runtime supports") from err


def output_names(model_path: Path) -> list[str]:
    model = onnx.load(str(model_path), load_external_data=False)
    return [output.name for output in model.graph.output]


@toolchain("openvino", extra="openvino", modules=("openvino",), precisions=PRECISIONS)
def run_openvino(model_path: Path, feeds: Feeds, precision: str) -> Feeds:
    results = compile_openvino(model_path, precision).create_infer_request().infer(feeds)
    by_name = {name: np.asarray(value) for port, value in results.items()
               for name in port.get_names()}
    return {name: by_name[name] for name in output_names(model_path) if name in by_name}


def compile_openvino(model_path: Path, precision: str = "f32") -> Any:
    """The model compiled for OpenVINO's CPU plugin at `precision`. The hint is always set:
    the plugin's default is bf16 on AVX-512 BF16 / AMX CPUs (3e-2 on BERT), which would make
    the comparison about a silent precision change instead of the graph."""
    import openvino as ov

    core = ov.Core()
    return core.compile_model(core.read_model(str(model_path)), "CPU",
                              {"INFERENCE_PRECISION_HINT": precision})


@toolchain("tvm", extra="tvm", modules=("tvm",))
def run_tvm(model_path: Path, feeds: Feeds, precision: str) -> Feeds:
    # TVM 0.27 has only Relax: import with the feeds' static shapes, compile for llvm (CPU).
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    model = onnx.load(str(model_path))
    shapes = {name: list(value.shape) for name, value in feeds.items()}
    dtypes = {name: str(value.dtype) for name, value in feeds.items()}
    module = from_onnx(model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    module = relax.transform.DecomposeOpsForInference()(module)
    machine = relax.VirtualMachine(tvm.compile(module, target="llvm"), tvm.cpu())
    inputs = [i.name for i in model.graph.input if i.name in feeds]
    result = machine["main"](*[tvm.runtime.tensor(feeds[name]) for name in inputs])
    values = list(result) if isinstance(result, (list, tuple, tvm.ir.Array)) else [result]
    return {name: value.numpy() for name, value in zip(output_names(model_path), values)}


@toolchain("mnn", extra="mnn", modules=("MNN", "_tools"))
def run_mnn(model_path: Path, feeds: Feeds, precision: str) -> Feeds:
    # The converter's C module `_tools`, never MNN.tools: importing MNN.tools.mnnconvert runs
    # `pip install` and tries to send a usage log.
    import _tools
    from MNN import expr, nn

    names = output_names(model_path)
    with tempfile.TemporaryDirectory(prefix="tm2onnx-mnn-") as work:
        target = str(Path(work) / "model.mnn")
        _tools.mnnconvert(["mnnconvert", "-f", "ONNX", "--modelFile", str(model_path),
                           "--MNNModel", target, "--bizCode", "tm2onnx"])
        if not Path(target).exists():
            raise RunError(f"MNN's converter wrote no model for {model_path.name}")
        module = nn.load_module_from_file(target, list(feeds), names)
        inputs = [_mnn_input(value) for value in feeds.values()]
        outputs = module.onForward(inputs)
        return {name: np.array(expr.convert(out, expr.NCHW).read(), copy=True)
                for name, out in zip(names, outputs)}


def _mnn_input(value: np.ndarray) -> Any:
    # MNN's converter turns int64 inputs into int32 ones: an int64 buffer would be read as
    # pairs of int32 (garbage indices), so narrow it, refusing values that do not fit.
    from MNN import expr

    if value.dtype == np.int64:
        if value.size and (value.min() < -2**31 or value.max() >= 2**31):
            raise RunError("MNN runs int64 inputs as int32; these values do not fit")
        value = value.astype(np.int32)
    table = {np.dtype(np.float32): expr.float, np.dtype(np.int32): expr.int,
             np.dtype(np.uint8): expr.uint8}
    if value.dtype not in table:
        raise RunError(f"MNN takes no {value.dtype} input", hint="feed float32 or int inputs")
    return expr.const(np.ascontiguousarray(value), list(value.shape), expr.NCHW,
                      table[value.dtype])


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Toolchains print progress from C++ straight to file descriptor 1 (MNN's converter, its
    device banner): send it to stderr so that `validate --json` stays parseable."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a stub without a spec
        return False
