"""Load a `.tm`, walk its graph (nested modules inlined) through the converter registries into a gs.Graph,
and produce a checked ONNX model; `save_model` writes atomically (temp file, then rename)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import __version__
from ..errors import ConversionError, LoadError, Tm2OnnxError, UnsupportedOpError
from .context import QDQ_ACTIVATIONS, QDQ_WEIGHTS, ExportContext, exported_dtype
from .guards import check_batch_axes, check_no_float64, check_traced_shapes, inferred_types
from .targets import DEFAULT_TARGET, check_target, get_target

DEFAULT_OPSET = 17
MIN_OPSET = 13
ONNXRUNTIME_IR_VERSION = 10  # onnx 1.23 stamps 14; onnxruntime 1.23 accepts at most 11
BATCH_DIM = "batch"
SMALL_INITIALIZER = 1024  # elements; shape-like constants that shape inference must read


def load_traced(path: str | os.PathLike, *, allow_modules: Sequence[str] = (),
                unsafe: bool = False) -> Any:
    """Unpickle a TracedModule saved with `pickle.dump(trace_module(...))` or `mge.save`,
    safely unless `unsafe` (see tm2onnx.loading and docs/safety.md)."""
    from ..load.loading import load_traced as safe_load

    return safe_load(path, allow_modules=allow_modules, unsafe=unsafe)


def export(model: Any, *example_inputs: Any, opset: int = DEFAULT_OPSET,
           dynamic_batch: bool = False, input_names: Sequence[str] | None = None,
           output_names: Sequence[str] | None = None, source: str | None = None,
           qdq_activations: str = "uint8", qdq_weights: str = "int8",
           target: str = DEFAULT_TARGET) -> onnx.ModelProto:
    """Export a TracedModule, a path to a pickled `.tm`, or a Module plus example inputs.
    `source` names the model in error messages (default: the path, or the type name).
    `qdq_activations` ("uint8" or "int8") types QAT/int8 activations, `qdq_weights` ("int8" or
    "uint8" = int8 + 128) their 8-bit weights (docs/quantization.md). `target` picks the
    toolchain's patterns and refuses what it cannot run (docs/targets.md; default "generic",
    the portable form)."""
    from . import converters

    converters.load_all()
    if source is None:
        source = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    _check_opset(opset, source)
    traced = _as_traced(model, example_inputs, source)
    traced.eval()
    if dynamic_batch and any(node.shape and node.shape[0] == 1
                             for node in traced.graph.inputs[1:]):
        warnings.warn(f"{source}: traced at batch size 1 but exported with a dynamic batch; "
                      "size-1 logic such as squeeze() cannot tell the batch axis apart — trace "
                      "at batch > 1 to be sure", stacklevel=2)
    ctx = ExportContext(opset=opset, dynamic_batch=dynamic_batch, source=source)
    ctx.target = get_target(target, source)
    ctx.qdq_activations = _check_choice("qdq_activations", qdq_activations, QDQ_ACTIVATIONS,
                                        source)
    ctx.qdq_weights = _check_choice("qdq_weights", qdq_weights, QDQ_WEIGHTS, source)
    graph_inputs = _bind_inputs(ctx, traced, input_names)
    _convert_exprs(ctx, traced)
    graph_outputs = _bind_outputs(ctx, traced, output_names, graph_inputs)
    ctx.graph.inputs, ctx.graph.outputs = graph_inputs, graph_outputs
    return _finish(ctx)


def save_model(model: onnx.ModelProto, path: str | os.PathLike, *,
               external_data: bool | None = None) -> bool:
    """Write atomically (see tm2onnx.fileio.save_onnx): a failure never leaves a half-written
    file; past 2 GB (or with `external_data`) tensors go to `<path>.data`."""
    from ..fileio import save_onnx

    return save_onnx(model, path, external_data=external_data)


# ---- steps ---------------------------------------------------------------------------------
def _check_opset(opset: int, source: str) -> None:
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise Tm2OnnxError(f"opset {opset} is not supported", where=source,
                           hint=f"choose {MIN_OPSET}..{newest}")


def _check_choice(option: str, value: str, choices: Sequence[str], source: str) -> str:
    if value not in choices:
        raise Tm2OnnxError(f"{option}={value!r} is not supported", where=source,
                           hint=f"choose one of {', '.join(choices)}")
    return value


def _as_traced(model: Any, example_inputs: Sequence[Any], source: str) -> Any:
    import megengine as mge
    import megengine.module as M
    import megengine.traced_module as tm

    if isinstance(model, (str, os.PathLike)):
        return load_traced(model)
    if isinstance(model, tm.TracedModule):
        return model
    if isinstance(model, M.Module):
        if not example_inputs:
            raise LoadError("a plain Module needs example inputs to trace", where=source,
                            hint="call tm2onnx.export(net, example_tensor)")
        model.eval()
        tensors = [x if isinstance(x, mge.Tensor) else mge.Tensor(np.asarray(x))
                   for x in example_inputs]
        return tm.trace_module(model, *tensors)
    raise LoadError(f"cannot export a {type(model).__name__}", where=source,
                    hint="pass a TracedModule, a .tm path, or a megengine Module with inputs")


def _bind_inputs(ctx: ExportContext, traced: Any, names: Sequence[str] | None) -> list:
    nodes = traced.graph.inputs[1:]
    names = _check_names(names, len(nodes), "input", ctx.source)
    variables = []
    for index, node in enumerate(nodes):
        shape = list(node.shape) if node.shape is not None else None
        if ctx.dynamic_batch and shape:
            shape[0] = BATCH_DIM
        name = names[index] if names else node.name
        ctx.reserve(name)
        variable = gs.Variable(name, dtype=exported_dtype(node.dtype), shape=shape)
        ctx.bind(node, variable)
        variables.append(variable)
    return variables


def _bind_outputs(ctx: ExportContext, traced: Any, names: Sequence[str] | None,
                  graph_inputs: list) -> list:
    nodes = traced.graph.outputs
    names = _check_names(names, len(nodes), "output", ctx.source)
    inputs = {id(v) for v in graph_inputs}
    ctx.expr, ctx.module_path = None, ""
    outputs, seen = [], set()
    for index, node in enumerate(nodes):
        tensor = ctx.value_of(node)
        wanted = names[index] if names else node.name
        if isinstance(tensor, gs.Constant) or id(tensor) in seen or id(tensor) in inputs:
            identity = gs.Variable(ctx.unique(wanted), dtype=tensor.dtype, shape=tensor.shape)
            ctx.graph.nodes.append(gs.Node("Identity", name=ctx.node_name(f"{wanted}/Identity"),
                                           inputs=[tensor], outputs=[identity]))
            tensor = identity
        elif tensor.name != wanted:
            _name_output(ctx, tensor, wanted, user_named=names is not None,
                         keep={*inputs, *seen})
        if ctx.dynamic_batch and not _has_symbolic_dim(tensor):
            tensor.shape = None  # declared from ONNX shape inference in _finish
        seen.add(id(tensor))
        outputs.append(tensor)
    return outputs


def _name_output(ctx: ExportContext, tensor: gs.Tensor, wanted: str, *, user_named: bool,
                 keep: set[int]) -> None:
    """Give an output its traced node's name. A generated name taken by an inner tensor (a
    submodule `conv` with a child `out` makes `conv_out_out`, as does a returned `conv_out`)
    moves that tensor to a fresh name: output names are what users look up. Only a name the
    user chose (--output-names) that is taken is refused."""
    if wanted in ctx._used_names:
        if user_named:
            raise Tm2OnnxError(f"output name {wanted!r} is already used in the graph",
                               where=ctx.source, hint="pick another --output-names entry")
        holder = ctx.graph.tensors().get(wanted)
        if holder is None or id(holder) in keep:  # a graph input or earlier output has it
            wanted = ctx.unique(wanted)
        else:
            holder.name = ctx.unique(wanted)
    ctx.reserve(wanted)
    tensor.name = wanted


def _check_names(names: Sequence[str] | None, count: int, kind: str, source: str):
    if names is None:
        return None
    names = list(names)
    if len(names) != count or len(set(names)) != len(names):
        raise Tm2OnnxError(f"got {len(names)} {kind} names for {count} {kind}s", where=source,
                           hint=f"give exactly {count} distinct names")
    return names


def _convert_exprs(ctx: ExportContext, traced: Any) -> None:
    from .walk import convert_all

    unsupported = convert_all(ctx, traced)
    if unsupported:
        listing = ", ".join(unsupported)
        raise UnsupportedOpError(
            f"{len(unsupported)} {'exprs have' if len(unsupported) > 1 else 'expr has'} no "
            f"ONNX converter: {listing}", where=ctx.source,
            hint="add one with @function_converter/@method_converter/@module_converter "
                 "(see docs/extending.md)")


def _finish(ctx: ExportContext) -> onnx.ModelProto:
    ctx.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    _portable_rewrites(ctx.graph, PORTABLE_REWRITES + ctx.target.rewrites)
    _undeclare_data_dependent(ctx.graph)
    model = gs.export_onnx(ctx.graph, do_type_check=True)
    # The lowest IR version the opset needs, so every runtime that knows the opset loads it.
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import),
                                                           ignore_unknown=True)
    model.producer_name, model.producer_version = "tm2onnx", __version__
    for node in model.graph.node:
        for key, value in ctx.provenance.get(node.name, {}).items():
            if value:
                node.metadata_props.add(key=key, value=value)
    skeleton = structure_of(model)
    try:
        types = inferred_types(skeleton)  # strict shape inference from the inputs alone
        _fill_output_types(model, types)
        del skeleton.graph.output[:]
        skeleton.graph.output.extend(model.graph.output)
        onnx.checker.check_model(skeleton)
    except Exception as err:
        raise ConversionError(f"exported model fails onnx.checker: {err}", where=ctx.source,
                              hint="this is a tm2onnx bug; please report it") from err
    check_traced_shapes(model, types, ctx.expected, ctx.source)
    check_batch_axes(model, types, ctx.batch_dependent, ctx.source)
    check_no_float64(model, types, _traced_float64(ctx), ctx.source)
    check_target(model, types, ctx.target, ctx.source)
    return model


def _traced_float64(ctx: ExportContext) -> bool:
    """Whether MegEngine traced any float64 value (an input or an expr output)."""
    dtypes = [dtype for _, _, dtype in ctx.expected]
    dtypes += [value.dtype for value in ctx.graph.inputs]
    return any(dtype is not None and np.dtype(dtype) == np.float64 for dtype in dtypes)


PORTABLE_REWRITES = ("shuffle-4d",)  # every target: rank <= 4 where a 4-D form keeps the batch


def _portable_rewrites(graph: gs.Graph, names: tuple[str, ...]) -> None:
    """Patterns MegEngine code writes in a form some toolchains cannot run, rewritten to an
    equivalent one every toolchain (or the target) has (each transform proves its match, or
    skips)."""
    from ..transforms import TRANSFORMS

    for name in names:
        TRANSFORMS[name](graph)  # no size stats: they would walk every weight once more


def _has_symbolic_dim(tensor: gs.Tensor) -> bool:
    """A converter set a named dim (an NMS count): it is declared so, never as the traced int."""
    return any(isinstance(dim, str) and dim != BATCH_DIM for dim in tensor.shape or ())


def _undeclare_data_dependent(graph: gs.Graph) -> None:
    """Tensors computed from a data-dependent dim have their traced shapes only for the traced
    data: leave them undeclared (outputs get ONNX's inferred shapes)."""
    frontier = [t for t in graph.tensors().values() if _has_symbolic_dim(t)]
    seen = {id(t) for t in frontier}
    while frontier:
        for node in frontier.pop().outputs:
            for tensor in node.outputs:
                if id(tensor) not in seen:
                    seen.add(id(tensor))
                    tensor.shape = None
                    frontier.append(tensor)


def check_structure(model: onnx.ModelProto) -> None:
    """onnx.checker with full shape inference on the model's structure (see structure_of)."""
    onnx.checker.check_model(structure_of(model), full_check=True)


def structure_of(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its weights: large initializers become typed graph inputs, so the
    checker and shape inference need not serialize megabytes of them (a quarter of ResNet-50's
    export time); small ones (shapes, sizes, axes) stay, as shape inference reads their values.
    The weight bytes themselves come straight from numpy."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version, producer_name=model.producer_name)
    skeleton.opset_import.extend(model.opset_import)
    graph = skeleton.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    for init in model.graph.initializer:
        if np.prod(init.dims, dtype=np.int64) <= SMALL_INITIALIZER:
            graph.initializer.append(init)
        else:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type,
                                                                  init.dims))
    return skeleton


def _fill_output_types(model: onnx.ModelProto, types: dict[str, onnx.TypeProto]) -> None:
    """Outputs declared without a shape (dynamic batch, data-dependent) take the inferred one."""
    for output in model.graph.output:
        inferred = types.get(output.name)
        if (not output.type.tensor_type.HasField("shape") and inferred is not None
                and inferred.tensor_type.HasField("shape")):
            output.type.CopyFrom(inferred)
