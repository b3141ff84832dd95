"""ModelProto <-> gs.Graph without losing what onnx-graphsurgeon drops: per-node metadata_props
(the exporter's MegEngine provenance), model metadata, opset imports and the input's IR version
(raised only when an opset needs it)."""

from __future__ import annotations

import math
from collections.abc import Callable

import onnx
import onnx_graphsurgeon as gs

from .graphops import live_view
from .patterns import replace_uses, tensor_map

# Internal exports (for shape inference) only: onnx 1.23 stamps IR 11+, which onnxruntime 1.23
# refuses. Written models keep the input's IR version (see ir_version_for).
IR_VERSION = 10
# Provenance keys the exporter writes into node.metadata_props.
PROVENANCE_KEYS = ("module", "fused", "qualname", "orig_name", "expr")
_META_ATTR = "_tm2onnx_node_metadata"
_OVERRIDABLE_ATTR = "_tm2onnx_overridable_defaults"


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import `model` (not modified); node metadata is kept on the graph, keyed by node name."""
    graph = gs.import_onnx(model)
    _keep_overridable(model, graph)
    metadata: dict[str, dict[str, str]] = {}
    # gs keeps node order and names, so the i-th proto node is the i-th gs node.
    for index, (proto, node) in enumerate(zip(model.graph.node, graph.nodes)):
        if not proto.metadata_props:
            continue
        if not node.name:
            node.name = f"{node.op}_{index}_meta"
        metadata[node.name] = {p.key: p.value for p in proto.metadata_props}
    setattr(graph, _META_ATTR, metadata)
    return graph


def _keep_overridable(model: onnx.ModelProto, graph: gs.Graph) -> None:
    """An initializer also listed as a graph input is a default the caller may override: gs
    imports it as a constant (and drops the input), so transforms would fold or merge it. It
    becomes a plain graph input here, its default kept aside for to_model."""
    listed = {value.name for value in model.graph.input}
    defaults = {init.name: init for init in model.graph.initializer if init.name in listed}
    setattr(graph, _OVERRIDABLE_ATTR, defaults)
    if not defaults:
        return
    tensors = tensor_map(graph)
    inputs = {t.name: t for t in graph.inputs}
    for name in defaults:
        const = tensors.get(name)
        if not isinstance(const, gs.Constant):
            continue
        variable = gs.Variable(name, dtype=const.dtype, shape=list(const.shape))
        replace_uses(const, variable, graph)
        inputs[name] = variable
    graph.inputs = [inputs[value.name] for value in model.graph.input if value.name in inputs]


def _restore_overridable(graph: gs.Graph, model: onnx.ModelProto) -> None:
    defaults = getattr(graph, _OVERRIDABLE_ATTR, {})
    present = {init.name for init in model.graph.initializer}
    for value in model.graph.input:
        if value.name in defaults and value.name not in present:
            model.graph.initializer.append(defaults[value.name])


def node_metadata(graph: gs.Graph) -> dict[str, dict[str, str]]:
    """The graph's node-name -> metadata mapping (created empty for graphs built by hand)."""
    if not hasattr(graph, _META_ATTR):
        setattr(graph, _META_ATTR, {})
    return getattr(graph, _META_ATTR)


def merge_metadata(graph: gs.Graph, keep: gs.Node, removed: gs.Node) -> None:
    """`keep` took over `removed`'s outputs (a fold): it now answers for them with `removed`'s
    provenance, and lists the modules folded into it under `fused` (e.g. `module=bn,
    fused=conv`), so data-flow queries still answer in MegEngine terms after a fold."""
    metadata = node_metadata(graph)
    gone = metadata.get(removed.name)
    if gone is None:
        return
    kept = metadata.get(keep.name, {})
    fused = [part for part in (kept.get("fused"), kept.get("module")) if part]
    merged = dict(gone)
    if fused:
        merged["fused"] = ",".join(fused)
    metadata[keep.name] = merged


def inherit_metadata(graph: gs.Graph, new_node: gs.Node, source: gs.Node) -> None:
    """Give `new_node` the provenance of the node it replaces, unless it already has its own."""
    metadata = node_metadata(graph)
    if source.name in metadata and new_node.name not in metadata:
        metadata[new_node.name] = dict(metadata[source.name])


def to_model(graph: gs.Graph, like: onnx.ModelProto | None = None) -> onnx.ModelProto:
    """Export `graph`, copying model-level fields from `like` and reattaching node metadata."""
    model = gs.export_onnx(graph, do_type_check=False)
    if like is not None:
        _copy_model_fields(like, model)
    model.ir_version = ir_version_for(model, like.ir_version if like is not None else 0)
    _restore_overridable(graph, model)
    metadata = node_metadata(graph)
    if metadata:
        for node in model.graph.node:
            for key, value in metadata.get(node.name, {}).items():
                model_prop = node.metadata_props.add()
                model_prop.key, model_prop.value = key, value
    return model


def ir_version_for(model: onnx.ModelProto, at_least: int = 0) -> int:
    """The lowest IR version `model`'s opsets need (onnx's table; unknown domains ignored), or
    `at_least` (the input's) when higher: an output is never stamped newer than it must be, so
    a runtime that loaded the input loads the output."""
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    return max(needed, at_least)


def _copy_model_fields(like: onnx.ModelProto, model: onnx.ModelProto) -> None:
    model.producer_name = like.producer_name
    model.producer_version = like.producer_version
    model.domain = like.domain
    model.model_version = like.model_version
    model.doc_string = like.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    # Keep the original opset versions; add only domains a transform introduced.
    versions = {op.domain: op.version for op in model.opset_import}
    versions.update({op.domain: op.version for op in like.opset_import})
    del model.opset_import[:]
    for domain, version in versions.items():
        model.opset_import.add(domain=domain, version=version)


def provenance(graph: gs.Graph, node: gs.Node | None) -> dict[str, str]:
    """The MegEngine provenance recorded for `node` (empty if none): module, fused, qualname,
    orig_name, expr."""
    if node is None:
        return {}
    meta = node_metadata(graph).get(node.name, {})
    return {key: meta[key] for key in PROVENANCE_KEYS if key in meta}


def rank_finder(graph: gs.Graph) -> Callable[[gs.Tensor], int | None]:
    """`rank(tensor)`: from gs's shape when known, else from ONNX shape inference, which runs
    at most once (on first need) so passes stay linear."""
    inferred: dict[str, int] = {}

    def rank(tensor: gs.Tensor) -> int | None:
        if tensor.shape is not None:
            return len(tensor.shape)
        if not inferred:
            inferred.update(_inferred_ranks(graph))
            inferred.setdefault("", -1)  # mark as computed even when nothing was inferred
        return inferred.get(tensor.name)

    return rank


# Initializers with more elements than this reach shape inference as typed inputs, not data:
# inference reads only small (shape-like) values, and copying a ViT's 330 MB twice per pass
# was most of its cost.
INFERENCE_DATA_LIMIT = 1024


def inference_model(graph: gs.Graph) -> onnx.ModelProto:
    """The live nodes of `graph` (a pass may be midway) as a model for shape inference, large
    initializers replaced by graph inputs of the same type and shape."""
    model = gs.export_onnx(live_view(graph), do_type_check=False)
    model.ir_version = IR_VERSION
    keep, typed = [], []
    for init in model.graph.initializer:
        if math.prod(init.dims) <= INFERENCE_DATA_LIMIT or init.data_type == onnx.TensorProto.STRING:
            keep.append(init)
        else:
            typed.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, init.dims))
    if typed:
        listed = {value.name for value in model.graph.input}
        kept = [onnx.TensorProto.FromString(init.SerializeToString()) for init in keep]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
        model.graph.input.extend(v for v in typed if v.name not in listed)
    return model


def _inferred_ranks(graph: gs.Graph) -> dict[str, int]:
    model = inference_model(graph)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 — no ranks is a safe answer: callers then refuse
        return {}
    values = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values
            if v.type.tensor_type.HasField("shape")}


def infer_onto(graph: gs.Graph) -> int:
    """Run ONNX shape inference once (symbolic dims kept as names, unknown ones None) and give
    every variable the inferred shape where it knows more sizes; returns how many changed."""
    model = inference_model(graph)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 — no shapes is a safe answer: nothing then folds
        return 0
    known = {v.name: v.type.tensor_type for v in model.graph.value_info
             if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")}
    count = 0
    for node in graph.nodes:
        for tensor in node.outputs:
            found = known.get(tensor.name)
            if found is None or isinstance(tensor, gs.Constant):
                continue
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in found.shape.dim]
            if _sizes_known(shape) > _sizes_known(tensor.shape):
                tensor.shape = shape
                count += 1
            if tensor.dtype is None and found.elem_type:
                tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(found.elem_type)
    return count


def _sizes_known(shape: list | None) -> int:
    """-1 for no shape, else how many dims have a known size (a rank alone counts 0)."""
    return -1 if shape is None else sum(isinstance(d, int) for d in shape)
