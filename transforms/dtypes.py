"""Element-type helpers for the precision transforms: what dtype a tensor has (from gs or ONNX
type inference), whether a constant fits float16, and Cast insertion. Generic graph helpers,
kept here until they move to patterns.py/graphio.py."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .graphio import IR_VERSION
from .patterns import const_array

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)
FP16_MAX = float(np.finfo(np.float16).max)  # 65504; anything larger rounds to inf
FP16_TINY = float(np.finfo(np.float16).tiny)  # 6.1e-5; smaller values are subnormal or 0
# For each input and output of a node: whether it is float32 and takes the op's float type.
Slots = tuple[list[bool], list[bool]]


def as_dtype(value: object) -> np.dtype | None:
    """gs keeps np dtypes, but an ONNX enum or a type onnx cannot map is possible."""
    if value is None:
        return None
    try:
        if isinstance(value, int):
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value))
        return np.dtype(value)
    except (TypeError, KeyError, ValueError):
        return None


def dtype_finder(graph: gs.Graph) -> Callable[[gs.Tensor], np.dtype | None]:
    """`dtype(tensor)`: gs's dtype when known, else ONNX type inference (run once, lazily)."""
    inferred: dict[str, np.dtype | None] = {}

    def dtype(tensor: gs.Tensor) -> np.dtype | None:
        if isinstance(tensor, gs.Constant):
            return np.asarray(tensor.values).dtype
        if (known := as_dtype(tensor.dtype)) is not None:
            return known
        if not inferred:
            inferred.update(_inferred_dtypes(graph))
            inferred.setdefault("", None)  # computed, even when nothing was inferred
        return inferred.get(tensor.name)

    return dtype


def _inferred_dtypes(graph: gs.Graph) -> dict[str, np.dtype | None]:
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = IR_VERSION
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except onnx.shape_inference.InferenceError:
        return {}
    values = [*model.graph.value_info, *model.graph.input, *model.graph.output]
    return {v.name: as_dtype(v.type.tensor_type.elem_type) for v in values
            if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}


def fp16_range_reason(tensor: gs.Tensor, *, divisor: bool = False) -> str | None:
    """Why the constant `tensor` cannot become float16 (None when it fits): a value past
    65504 (inf), a tensor whose largest value is below fp16's smallest normal (it turns 0 or
    loses its precision: `x * 1e-8` would compute 0), or, for a `divisor`, any nonzero value
    that small (`x / 1e-8` would compute inf). Single tiny weights among normal ones only lose
    an absolute error far below fp16's own, so they are fine."""
    value = const_array(tensor)
    if value is None or value.size == 0 or not np.issubdtype(value.dtype, np.floating):
        return None
    magnitude = np.abs(value)
    largest = float(np.max(magnitude))
    if largest > FP16_MAX:  # also catches inf; nan compares false and stays nan in fp16
        return f"{tensor.name} has |value| {largest:.4g} > {FP16_MAX:g}, beyond fp16 range"
    nonzero = magnitude[magnitude > 0]
    smallest = float(np.min(nonzero)) if nonzero.size else 0.0
    if divisor and nonzero.size and smallest < FP16_TINY:
        return (f"divisor {tensor.name} has |value| {smallest:.4g} < {FP16_TINY:.4g}, which "
                "fp16 flushes toward 0 (the quotient would overflow)")
    if 0 < largest < FP16_TINY:
        return (f"{tensor.name} has |value| <= {largest:.4g} < {FP16_TINY:.4g}, which fp16 "
                "flushes to 0 or subnormal")
    return None


def input_reason(graph: gs.Graph, tensor: gs.Tensor | None, what: str) -> str | None:
    """Why `tensor` is not a float32 initializer whose values can be rewritten (None if it is)."""
    if tensor is None or not tensor.name:
        return f"no {what}"
    if not isinstance(tensor, gs.Constant):
        if any(t is tensor for t in graph.inputs):
            return f"{what} {tensor.name} is a graph input"
        kind = "a Constant node's output" if const_array(tensor) is not None else "not constant"
        return f"{what} {tensor.name} is {kind}"
    if np.asarray(tensor.values).dtype != F32:
        return f"{what} {tensor.name} is {np.asarray(tensor.values).dtype}, not float32"
    return None


def add_cast(graph: gs.Graph, fresh: Callable[[str], str], src: gs.Tensor, dtype: np.dtype,
             out: gs.Variable | None = None) -> gs.Variable:
    """Append `out = Cast<to=dtype>(src)`; `out` defaults to a new tensor named after src."""
    suffix = "fp16" if dtype == F16 else dtype.name
    if out is None:
        out = gs.Variable(fresh(f"{src.name}_{suffix}"), dtype=dtype, shape=src.shape)
    out.dtype = dtype
    node = gs.Node("Cast", fresh(f"{src.name}.to_{suffix}"),
                   attrs={"to": onnx.helper.np_dtype_to_tensor_dtype(dtype)},
                   inputs=[src], outputs=[out])
    graph.nodes.append(node)
    return out


def nodes_count(graph: gs.Graph, op: str) -> int:
    return sum(node.op == op for node in graph.nodes)


def float16_slots(node: gs.Node, opset: int, dtype: Callable[[gs.Tensor], np.dtype | None]
                  ) -> Slots | str | None:
    """Which of node's tensors turn fp16 with it, by the op schema's type constraints; None
    when the node touches no float32 tensor, a reason when it cannot run in fp16."""
    tensors = [*node.inputs, *node.outputs]
    kinds = [dtype(t) if t.name else np.dtype(np.int8) for t in tensors]  # "" = omitted input
    if all(k is not None and k != F32 for k in kinds):
        return None
    try:
        schema = onnx.defs.get_schema(node.op, opset, node.domain or "")
    except onnx.defs.SchemaError:
        return f"no ONNX schema for {node.domain or 'ai.onnx'}::{node.op}"
    caps = {c.type_param_str for c in schema.type_constraints
            if "tensor(float16)" in c.allowed_type_strs}
    ins, outs = _formals(schema.inputs, node.inputs), _formals(schema.outputs, node.outputs)
    if any(v in caps and v not in ins for v in outs):
        return f"{node.op} sets its output type by attribute"
    for tensor, kind, var in zip(tensors, kinds, ins + outs):
        if kind is None and var in caps:
            return f"dtype of {tensor.name} unknown"
    flags = [var in caps and kind == F32 for kind, var in zip(kinds, ins + outs)]
    if not any(flags):
        return None
    return flags[:len(ins)], flags[len(ins):]


def _formals(params: list, tensors: list[gs.Tensor]) -> list[str]:
    """The type string of each tensor's formal parameter (a variadic last one types the rest)."""
    return [params[min(i, len(params) - 1)].type_str if params else "" for i in
            range(len(tensors))]
