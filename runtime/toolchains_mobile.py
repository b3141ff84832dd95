"""Mobile runtimes for `validate --runtime tflite|ncnn`, registered into runtime/toolchains.py:
TFLite (ONNX -> onnx2tf -> .tflite -> the LiteRT interpreter) and ncnn (ONNX -> pnnx ->
param/bin -> ncnn's Python bindings). Both convert into a temporary folder and return
outputs in the ONNX layout and by ONNX output name, f32 only."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from tm2onnx.errors import RunError

from .toolchain_registry import Feeds, output_names, toolchain

# pnnx's and ncnn's batch_index for "this blob has no batch axis".
NO_BATCH = 233


def static_output_shapes(model_path: Path, feeds: Feeds) -> list[tuple[int, ...] | None]:
    """Each output's shape at the feeds' shapes, by ONNX shape inference (None where unknown)."""
    model = onnx.load(str(model_path), load_external_data=False)
    for value in model.graph.input:
        if value.name in feeds:
            dims = value.type.tensor_type.shape.dim
            for dim, size in zip(dims, feeds[value.name].shape):
                dim.Clear()
                dim.dim_value = int(size)
    inferred = onnx.shape_inference.infer_shapes(model).graph.output
    shapes: list[tuple[int, ...] | None] = []
    for value in inferred:
        dims = value.type.tensor_type.shape.dim
        known = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
        shapes.append(tuple(known) if dims and -1 not in known else None)
    return shapes


def with_flat_outputs(model_path: Path, shapes: list[tuple[int, ...] | None], target: Path
                      ) -> dict[str, str]:
    """A copy of the model whose rank >= 3 outputs are read through Flatten(axis=0): onnx2tf
    computes channels-last inside and must put the ONNX order back before a Flatten, so the
    values come out in the ONNX order whatever layout it picks for its outputs (guessing from
    the shape fails where both layouts have one, e.g. (1, 16, 16, 16)). ONNX name -> name to
    read in the .tflite."""
    model = onnx.load(str(model_path))
    read = {}
    for value, shape in zip(list(model.graph.output), shapes):
        rank = len(value.type.tensor_type.shape.dim)
        if rank < 3:
            read[value.name] = value.name
            continue
        if shape is None:
            raise RunError(f"TFLite output {value.name!r}: its ONNX shape is not static at "
                           "these feeds", hint="pass --dim for every dynamic axis")
        flat = f"{value.name}__tm2onnx_flat"
        model.graph.node.append(onnx.helper.make_node("Flatten", [value.name], [flat], axis=0))
        model.graph.output.remove(value)
        model.graph.output.append(onnx.helper.make_tensor_value_info(
            flat, value.type.tensor_type.elem_type, [1, int(np.prod(shape))]))
        read[value.name] = flat
    onnx.save(model, str(target))
    return read


@toolchain("tflite", extra="tflite", modules=("onnx2tf", "ai_edge_litert"),
           note="then pip install --no-deps onnx2tf onnxsim, on Python >= 3.12")
def run_tflite(model_path: Path, feeds: Feeds, precision: str) -> Feeds:
    # Inputs keep the ONNX layout (keep_shape_absolutely_input_names: onnx2tf inserts the
    # transpose inside the .tflite), so the same feeds go in; outputs are read by name
    # (copy_onnx_input_output_names_to_tflite), rank >= 3 ones flattened in the ONNX order.
    import onnx2tf
    from ai_edge_litert.interpreter import Interpreter

    names = output_names(model_path)
    shapes = dict(zip(names, static_output_shapes(model_path, feeds)))
    with tempfile.TemporaryDirectory(prefix="tm2onnx-tflite-") as work:
        source = Path(work) / "model.onnx"
        read = with_flat_outputs(model_path, list(shapes.values()), source)
        # onnx2tf reports timings with print(): keep them out of `validate --json`'s stdout.
        with contextlib.redirect_stdout(sys.stderr):
            onnx2tf.convert(
                input_onnx_file_path=str(source), output_folder_path=work,
                non_verbose=True, keep_shape_absolutely_input_names=list(feeds),
                overwrite_input_shape=[f"{k}:{','.join(map(str, v.shape))}"
                                       for k, v in feeds.items()],
                copy_onnx_input_output_names_to_tflite=True, output_signaturedefs=True)
        found = sorted(Path(work).glob("*_float32.tflite"))
        if not found:
            raise RunError(f"onnx2tf wrote no float32 .tflite for {model_path.name}")
        interpreter = Interpreter(model_path=str(found[0]))
        runner = interpreter.get_signature_runner()
        got = runner(**{k: np.ascontiguousarray(v) for k, v in feeds.items()})
    missing = [read[name] for name in names if read[name] not in got]
    if missing:
        raise RunError(f"the .tflite has no output named {missing[0]!r} "
                       f"(it has {', '.join(sorted(got))})")
    return {name: np.asarray(got[read[name]]).reshape(shapes[name] or np.shape(got[name]))
            for name in names}


@toolchain("ncnn", extra="ncnn", modules=("pnnx", "ncnn"))
def run_ncnn(model_path: Path, feeds: Feeds, precision: str) -> Feeds:
    # pnnx names blobs in0, in1, ... / out0, out1, ... in the ONNX graph's order; ncnn blobs
    # have no batch axis and at most 4 dims (w, h, d, c): where pnnx found a batch axis it
    # must be 1 and is left out, elsewhere every axis is an ncnn axis.
    import ncnn

    for name, value in feeds.items():
        if value.ndim == 0 or value.ndim > 5:
            raise RunError(f"ncnn runs inputs of rank 1..5 (at most 4 dims besides a batch "
                           f"axis); {name!r} has shape {list(value.shape)}")
        if value.dtype != np.float32:
            raise RunError(f"ncnn runs float32 inputs; {name!r} is {value.dtype}")
    names = output_names(model_path)
    expected = static_output_shapes(model_path, feeds)
    # Positional blobs: the graph's input order, whatever order the feeds came in.
    graph_inputs = onnx.load(str(model_path), load_external_data=False).graph.input
    ordered = [(i.name, feeds[i.name]) for i in graph_inputs if i.name in feeds]
    with tempfile.TemporaryDirectory(prefix="tm2onnx-ncnn-") as work:
        stem = Path(work) / "model"
        onnx_copy = stem.with_suffix(".onnx")
        onnx_copy.write_bytes(model_path.read_bytes())
        shapes = ",".join("[" + ",".join(map(str, v.shape)) + "]" for _, v in ordered)
        done = subprocess.run([_pnnx_binary(), str(onnx_copy), f"inputshape={shapes}",
                               "fp16=0",  # pnnx stores weights as fp16 unless told (1e-4 off)
                               f"ncnnparam={stem}.ncnn.param", f"ncnnbin={stem}.ncnn.bin",
                               f"pnnxparam={stem}.pnnx.param", f"pnnxbin={stem}.pnnx.bin",
                               f"pnnxpy={stem}_pnnx.py", f"pnnxonnx={stem}.pnnx.onnx",
                               f"ncnnpy={stem}_ncnn.py"],
                              capture_output=True, text=True, cwd=work, check=False)
        param = Path(f"{stem}.ncnn.param")
        if done.returncode != 0 or not param.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RunError(f"pnnx cannot convert {model_path.name}: {tail[0]}")
        with ncnn.Net() as net:
            net.opt.use_fp16_packed = net.opt.use_fp16_storage = False
            net.opt.use_fp16_arithmetic = net.opt.use_bf16_storage = False
            if unknown := _unknown_layers(param):
                # ncnn would only print "layer X not exists" to stderr and fail to load.
                raise RunError(f"pnnx left layers ncnn has no kernel for: {', '.join(unknown)}")
            if net.load_param(str(param)) != 0 or net.load_model(f"{stem}.ncnn.bin") != 0:
                raise RunError(f"ncnn cannot load pnnx's output for {model_path.name}")
            batch = _batch_axes(Path(f"{stem}_ncnn.py"))
            with net.create_extractor() as extractor:
                for i, (name, value) in enumerate(ordered):
                    axis = _axis(batch, f"in{i}")
                    if axis != NO_BATCH and value.shape[axis] != 1:
                        raise RunError(f"ncnn runs batch-1 inputs (no batch axis); {name!r} "
                                       f"has shape {list(value.shape)}, batch on axis {axis}",
                                       hint="export and validate at batch 1 (--dim N=1)")
                    if axis == NO_BATCH and value.ndim > 4:
                        raise RunError(f"ncnn blobs have at most 4 dims; pnnx found no batch "
                                       f"axis on {name!r} of shape {list(value.shape)}")
                    mat = ncnn.Mat(np.ascontiguousarray(value), batch_index=axis)
                    extractor.input(f"in{i}", mat.clone())
                outputs = {}
                for i, name in enumerate(names):
                    code, mat = extractor.extract(f"out{i}")
                    if code != 0:
                        raise RunError(f"ncnn computed no out{i} for output {name!r}")
                    value = mat.numpy(batch_index=_axis(batch, f"out{i}")).copy()
                    outputs[name] = _at_onnx_shape(name, value, expected[i])
    return outputs


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _batch_axes(ncnn_py: Path) -> dict[str, int]:
    """The batch axis pnnx chose for each blob, read from the test script it writes (its only
    record): axis 0 where the graph shows one (a Conv's input), NO_BATCH where nothing does (a
    Concat of plain tensors), in which case ncnn sees every axis and its op axes count them."""
    text = ncnn_py.read_text() if ncnn_py.exists() else ""
    found = {f"in{i}": int(axis) for i, axis in
             re.findall(r'ex\.input\("in(\d+)", ncnn\.Mat\(in\d+\.numpy\(\), batch_index=(\d+)', text)}
    found.update({f"out{i}": int(axis) for i, axis in
                  re.findall(r"out(\d+)\.numpy\(batch_index=(\d+)\)", text)})
    return found


def _axis(batch: dict[str, int], blob: str) -> int:
    if blob not in batch:  # guessing would feed the wrong axes
        raise RunError(f"pnnx's ncnn script names no batch axis for blob {blob}")
    return batch[blob]


def _at_onnx_shape(name: str, value: np.ndarray, shape: tuple[int, ...] | None) -> np.ndarray:
    """ncnn's blob back at the ONNX shape: ncnn drops unit axes of its own (a (1, 1, 10)
    output comes back as w=10), so only unit axes may differ."""
    if shape is None or value.shape == shape:
        return value
    if _squeezed(value.shape) != _squeezed(shape):
        raise RunError(f"ncnn output {name!r} has shape {list(value.shape)}, ONNX says "
                       f"{list(shape)}")
    return value.reshape(shape)


def _unknown_layers(param: Path) -> list[str]:
    """Layer types in an ncnn .param (after its magic and count lines) that ncnn cannot create:
    what pnnx could not lower, e.g. torch.tile (pnnx 20261020 lowers no Tile, rank 4 or 5)
    or pnnx.Expression (QDQ)."""
    import ncnn

    types = {line.split()[0] for line in param.read_text().splitlines()[2:] if line.strip()}
    return sorted(t for t in types if ncnn.layer_to_index(t) < 0)


def _pnnx_binary() -> str:
    # Found, not imported: `import pnnx` imports torch (about 20 s), which the executable
    # converting an ONNX file does not need.
    spec = importlib.util.find_spec("pnnx")
    folders = list(spec.submodule_search_locations or []) if spec else []
    found = sorted(p for folder in folders for p in Path(folder).glob("pnnx*"))
    binaries = [p for p in found if p.is_file() and p.suffix in ("", ".exe")]
    if not binaries:
        raise RunError("the pnnx package has no pnnx executable")
    return str(binaries[0])
