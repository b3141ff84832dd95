"""One general check against silent wrong exports: ONNX shape inference, started from the graph
inputs alone (every declared intermediate shape stripped), must agree with the shape and dtype
MegEngine traced for each node; a disagreement is an error naming the expr that made it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx

from ..errors import ConversionError

Expectation = tuple[Any, Any, Any]  # (gs tensor, traced shape, traced dtype)


def inferred_types(skeleton: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Every tensor's type as ONNX infers it from the inputs: traced intermediate and output
    shapes are stripped; symbolic dims a converter declared (a data-dependent count) stay."""
    stripped = onnx.ModelProto()
    stripped.CopyFrom(skeleton)
    symbolic = [value for value in stripped.graph.value_info if _has_dim_param(value)]
    del stripped.graph.value_info[:]
    stripped.graph.value_info.extend(symbolic)
    for output in stripped.graph.output:
        if not _has_dim_param(output):
            output.type.tensor_type.ClearField("shape")
    # strict and type-checked: this is also the checker's full_check, run once instead of twice
    inferred = onnx.shape_inference.infer_shapes(stripped, check_type=True, strict_mode=True,
                                                 data_prop=True)
    graph = inferred.graph
    return {value.name: value.type for value in (*graph.input, *graph.value_info, *graph.output)}


def check_traced_shapes(model: onnx.ModelProto, types: dict[str, onnx.TypeProto],
                        expected: Iterable[Expectation], source: str) -> None:
    """Dims ONNX leaves symbolic or unknown (a dynamic batch, a data-dependent count) are
    skipped; every concrete dim, the rank and the element type must match the trace."""
    producers = {name: node for node in model.graph.node for name in node.output}
    for tensor, shape, dtype in expected:
        onnx_type = types.get(tensor.name)
        if onnx_type is None or not onnx_type.HasField("tensor_type"):
            continue
        problem = _disagreement(onnx_type.tensor_type, tuple(shape), dtype)
        if problem:
            raise ConversionError(f"{_where(producers.get(tensor.name))}{tensor.name}: {problem}",
                                  where=source, hint="the export would compute another shape "
                                  "than MegEngine; this is a tm2onnx bug, please report it")


def check_batch_axes(model: onnx.ModelProto, types: dict[str, onnx.TypeProto],
                     batch_dependent: Iterable[tuple[Any, frozenset[int]]], source: str) -> None:
    """With a dynamic batch: an axis MegEngine sizes by the batch (batchprobe) must not have a
    fixed size in ONNX, which a converter that took the batch for axis 0 would give it."""
    producers = {name: node for node in model.graph.node for name in node.output}
    for tensor, axes in batch_dependent:
        onnx_type = types.get(tensor.name)
        if onnx_type is None or not onnx_type.tensor_type.HasField("shape"):
            continue
        dims = onnx_type.tensor_type.shape.dim
        fixed = [axis for axis in sorted(axes)
                 if axis < len(dims) and dims[axis].HasField("dim_value")]
        if fixed:
            raise ConversionError(
                f"{_where(producers.get(tensor.name))}{tensor.name}: ONNX fixes axis {fixed[0]} "
                f"at {dims[fixed[0]].dim_value}, but MegEngine changes it with the batch",
                where=source, hint="the export would not work at another batch size; this is "
                "a tm2onnx bug, please report it (or export without --dynamic-batch)")


def _has_dim_param(value: onnx.ValueInfoProto) -> bool:
    return any(dim.HasField("dim_param") for dim in value.type.tensor_type.shape.dim)


def _disagreement(tensor_type: Any, shape: tuple, dtype: Any) -> str:
    want_type = _elem_type(dtype)
    have_type = tensor_type.elem_type
    if want_type is not None and have_type and have_type != want_type:
        return (f"ONNX infers {onnx.TensorProto.DataType.Name(have_type)}, MegEngine traced "
                f"{np.dtype(dtype)}")
    if not tensor_type.HasField("shape"):
        return ""
    dims = [dim.dim_value if dim.HasField("dim_value") else None
            for dim in tensor_type.shape.dim]
    concrete = [(have, want) for have, want in zip(dims, shape) if have is not None]
    if len(dims) != len(shape) or any(have != want for have, want in concrete):
        shown = ["?" if dim is None else dim for dim in dims]
        return f"ONNX infers shape {shown}, MegEngine traced {list(shape)}"
    return ""


def _elem_type(dtype: Any) -> int | None:
    """None where the ONNX type may rightly differ: a quantized MegEngine dtype (int8 with a
    scale) can be carried as its dequantized float by a QDQ export."""
    if dtype is None or (getattr(dtype, "metadata", None) or {}).get("mgb_dtype"):
        return None
    try:
        return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    except (TypeError, KeyError, ValueError):  # other MegEngine-only dtypes
        return None


def _where(node: Any) -> str:
    if node is None:
        return ""
    props = {prop.key: prop.value for prop in node.metadata_props}
    expr = props.get("expr") or node.name
    module = f" in {props['module']}" if props.get("module") else ""
    return f"{expr}{module}: "


def check_no_float64(model: onnx.ModelProto, types: dict[str, onnx.TypeProto],
                     traced_float64: bool, source: str) -> None:
    """No DOUBLE tensor, initializer or Cast unless MegEngine itself computed in float64: a
    converter that promoted by numpy's rules (float32 x int32 -> float64) exports ops that
    TFLite, TensorRT and most NPUs cannot run, for values MegEngine kept in float32."""
    if traced_float64:
        return
    double = onnx.TensorProto.DOUBLE
    producers = {name: node for node in model.graph.node for name in node.output}
    names = [name for name, value in types.items()
             if value.HasField("tensor_type") and value.tensor_type.elem_type == double]
    names += [init.name for init in model.graph.initializer if init.data_type == double]
    casts = [node for node in model.graph.node if node.op_type == "Cast"
             and any(a.name == "to" and a.i == double for a in node.attribute)]
    if names or casts:
        node = casts[0] if casts else producers.get(names[0])
        shown = names[0] if names else node.output[0]
        raise ConversionError(f"{_where(node)}{shown}: a float64 tensor where MegEngine traced "
                              "no float64 value", where=source,
                              hint="a converter promoted by numpy's rules, not MegEngine's; "
                                   "this is a tm2onnx bug, please report it")
