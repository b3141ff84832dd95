"""Integer ranges a model can take on its inputs: an input that reaches a Gather (an embedding
table) through value-preserving ops may only hold indices below that table's size on the axis."""

from __future__ import annotations

from collections import defaultdict

import onnx

# Ops whose output holds the same integer values as their first input (rearranged or cast).
_PASSTHROUGH = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Transpose",
                "Expand", "Slice", "Concat", "Tile", "Split"}
# op -> (index input position, data input position, attribute naming the axis)
_INDEXERS = {"Gather": (1, 0, "axis"), "GatherElements": (1, 0, "axis")}


def index_bounds(model: onnx.ModelProto) -> dict[str, tuple[int, str]]:
    """{graph input: (exclusive upper bound, why)} for integer inputs used as indices."""
    inputs = {v.name for v in model.graph.input} - {i.name for i in model.graph.initializer}
    shapes = _known_shapes(model)
    readers = defaultdict(list)
    for node in model.graph.node:
        for position, name in enumerate(node.input):
            readers[name].append((node, position))
    bounds: dict[str, tuple[int, str]] = {}
    for name in inputs:
        for node, size in _index_uses(name, readers, shapes):
            if name not in bounds or size < bounds[name][0]:
                why = f"indexes {node.input[_INDEXERS[node.op_type][1]]!r} ({node.op_type} " \
                      f"{node.name or '?'}, size {size})"
                bounds[name] = (size, why)
    return bounds


def _index_uses(name: str, readers: dict, shapes: dict[str, list[int]]):
    """(indexing node, table size on its axis) reached from tensor `name` through passthroughs."""
    seen, stack = set(), [name]
    while stack:
        tensor = stack.pop()
        if tensor in seen:
            continue
        seen.add(tensor)
        for node, position in readers.get(tensor, ()):
            if node.op_type in _PASSTHROUGH and position == 0 or node.op_type == "Concat":
                stack.extend(node.output)
                continue
            spec = _INDEXERS.get(node.op_type)
            if spec is None or position != spec[0]:
                continue
            data_shape = shapes.get(node.input[spec[1]])
            axis = next((a.i for a in node.attribute if a.name == spec[2]), 0)
            if data_shape and -len(data_shape) <= axis < len(data_shape):
                size = data_shape[axis]
                if isinstance(size, int) and size > 0:
                    yield node, size


def _known_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {i.name: list(i.dims) for i in model.graph.initializer}
    for node in model.graph.node:  # Constant nodes hold tables too
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = list(attr.t.dims)
    for value in [*model.graph.input, *model.graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        if value.name not in shapes and dims and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    return shapes
