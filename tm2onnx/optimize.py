"""What `optimize` does around the transforms: bind input shapes first, convert to an older
opset / IR version for old runtimes, write value_info, and tabulate op counts before/after."""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence

import onnx
from onnx import version_converter

from .errors import Tm2OnnxError
from .transforms.graphio import ir_version_for

# IR 3 wants every initializer listed as a graph input; nothing here writes that layout.
MIN_TARGET_IR = 4


def parse_input_shapes(items: Sequence[str] | None) -> dict[str, list[int | str]]:
    """['x=1,3,224,224', 'ids=batch,128'] -> {'x': [1, 3, 224, 224], 'ids': ['batch', 128]}."""
    shapes: dict[str, list[int | str]] = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        if not sep or not name or not dims:
            raise Tm2OnnxError(f"--input-shape {item!r} is not NAME=D,D,...",
                               hint="e.g. --input-shape x=1,3,224,224 (a word keeps a dim symbolic)")
        shapes[name] = [int(d) if d.strip().isdigit() else d.strip() for d in dims.split(",")]
    return shapes


def bind_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int | str]],
                      source: str = "model") -> onnx.ModelProto:
    """A copy of `model` whose graph inputs have these shapes (rank must match); stale
    value_info goes, so inference and folding see only the bound shapes."""
    if not shapes:
        return model
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inputs = {value.name: value for value in model.graph.input}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise Tm2OnnxError(f"--input-shape names no graph input: {', '.join(unknown)}",
                           where=source, hint=f"inputs: {', '.join(inputs)}")
    for name, dims in shapes.items():
        shape = inputs[name].type.tensor_type.shape
        if shape.dim and len(shape.dim) != len(dims):
            raise Tm2OnnxError(f"--input-shape {name} has rank {len(dims)}, the input rank "
                               f"{len(shape.dim)}", where=source, hint="give one size per dim")
        del shape.dim[:]
        for size in dims:
            dim = shape.dim.add()
            if isinstance(size, int):
                dim.dim_value = size
            else:
                dim.dim_param = size
    del model.graph.value_info[:]
    return model


def retarget(model: onnx.ModelProto, *, opset: int | None = None, ir_version: int | None = None,
             source: str = "model") -> onnx.ModelProto:
    """Convert to `opset` (onnx's version converter) and/or stamp `ir_version`, refusing an IR
    version older than the opsets need."""
    if opset is not None and opset != default_opset(model):
        older = opset < default_opset(model)
        converted = _relabel(model, opset) if older else None
        try:
            if converted is None:
                converted = version_converter.convert_version(model, opset)
            onnx.checker.check_model(converted, full_check=True)
        except Exception as err:
            raise Tm2OnnxError(f"cannot convert to opset {opset}: {str(err).splitlines()[0]}",
                               where=source, hint="try a nearer opset") from err
        converted.ir_version = ir_version_for(converted, 0 if older else model.ir_version)
        model = converted
    if ir_version is not None:
        needed = max(ir_version_for(model), MIN_TARGET_IR)
        if ir_version < needed:
            raise Tm2OnnxError(f"--target-ir {ir_version} is older than opset "
                               f"{default_opset(model)} allows (IR >= {needed})", where=source,
                               hint="add --opset N with an older opset as well")
        model.ir_version = ir_version
    return model


# (op, version) whose change from the version before only added types, or an attribute whose
# absence (or the value given) means the old behaviour: a node not using it runs the same at the
# older opset. onnx's version converter has no downgrade adapter for most of these.
_COMPATIBLE_CHANGES: dict[tuple[str, int], dict[str, object]] = {
    **{(op, 14): {} for op in ("Add", "Sub", "Mul", "Div", "Relu", "Identity", "CumSum")},
    **{(op, 16): {} for op in ("Identity", "Where", "LeakyRelu", "PRelu", "Less", "Greater",
                               "LessOrEqual", "GreaterOrEqual")},
    ("Pow", 15): {}, ("Reshape", 14): {"allowzero": 0}, ("Shape", 15): {"start": None, "end": None},
}


def _relabel(model: onnx.ModelProto, opset: int) -> onnx.ModelProto | None:
    """`model` stamped `opset` when every node means the same there (only type-adding or unused
    changes in between, checked per node); None when any node needs onnx's converter."""
    if model.graph.node and any(not _same_at(node, default_opset(model), opset)
                                for node in model.graph.node):
        return None
    relabeled = onnx.ModelProto.FromString(model.SerializeToString())
    for entry in relabeled.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    return relabeled


def _same_at(node: onnx.NodeProto, current: int, target: int) -> bool:
    if node.domain not in ("", "ai.onnx"):
        return False
    try:
        since = onnx.defs.get_schema(node.op_type, current).since_version
        floor = onnx.defs.get_schema(node.op_type, target).since_version
    except onnx.defs.SchemaError:
        return False
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    while since > floor:
        rule = _COMPATIBLE_CHANGES.get((node.op_type, since))
        if rule is None or any(name in attrs and attrs[name] != value
                               for name, value in rule.items()):
            return False
        since = onnx.defs.get_schema(node.op_type, since - 1).since_version
    return True


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def with_value_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with value_info for every tensor whose shape inference knows (symbolic dims
    kept); the model as it was when inference fails (e.g. an unknown domain)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 — value_info is an extra: never fail a write for it
        return model
    return inferred


def op_counts(model: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def op_count_rows(before: onnx.ModelProto, after: onnx.ModelProto
                  ) -> list[tuple[str, int, int]]:
    """(op, before, after) for every op type in either model, most frequent first; a last row
    'total'."""
    old, new = op_counts(before), op_counts(after)
    ops = sorted(set(old) | set(new), key=lambda op: (-max(old[op], new[op]), op))
    return [(op, old[op], new[op]) for op in ops] + [("total", sum(old.values()),
                                                       sum(new.values()))]


def op_count_table(rows: list[tuple[str, int, int]]) -> str:
    width = max(len("op"), *(len(op) for op, _, _ in rows))
    lines = [f"{'op':<{width}}  {'before':>6}  {'after':>6}"]
    for op, old, new in rows:
        mark = "" if old == new else f"  {new - old:+d}"
        lines.append(f"{op:<{width}}  {old:>6}  {new:>6}{mark}")
    return "\n".join(lines)


def op_count_json(rows: list[tuple[str, int, int]], **extra: object) -> str:
    ops = {op: {"before": old, "after": new} for op, old, new in rows if op != "total"}
    total = rows[-1]
    return json.dumps({**extra, "nodes": {"before": total[1], "after": total[2]}, "ops": ops},
                      indent=2)
