"""Runtimes other than onnxruntime that an exported file is deployed to: OpenVINO, TVM and MNN
here, TFLite and ncnn in toolchains_mobile.py, all registered into toolchain_registry.py (one
registry, name -> runner(model_path, feeds, precision) -> outputs by ONNX output name). Each
runtime is an optional extra; none of this imports MegEngine."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tm2onnx.errors import RunError

# Re-exported: the registry's public names were defined here first.
from . import toolchains_mobile  # noqa: F401  (TFLite, ncnn register on import)
from .toolchain_registry import (
    PRECISIONS,
    TOOLCHAINS,
    Feeds,
    MissingToolchain,
    Runner,
    Toolchain,
    output_names,
    require,
    run_toolchain,
    toolchain,
)

__all__ = ["PRECISIONS", "TOOLCHAINS", "Feeds", "MissingToolchain", "Runner", "Toolchain",
           "compile_openvino", "output_names", "require", "run_toolchain", "toolchain"]


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
