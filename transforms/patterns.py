"""Graph-walking helpers shared by every transform, written once and in linear time: gs keeps
`tensor.inputs` (producers) and `tensor.outputs` (consumers) up to date, so lookups are O(1)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable

import numpy as np
import onnx_graphsurgeon as gs
from onnx import numpy_helper

_SCALAR_ATTRS = {"value_float": np.float32, "value_int": np.int64,
                 "value_floats": np.float32, "value_ints": np.int64}


def nodes_of(graph: gs.Graph, *op_types: str) -> list[gs.Node]:
    """A snapshot list of the nodes with these op types (all nodes when none are given)."""
    wanted = set(op_types)
    return [node for node in graph.nodes if not wanted or node.op in wanted]


def producer(tensor: gs.Tensor | None, op: str | None = None) -> gs.Node | None:
    """The node producing `tensor`, if there is one and (when given) its op type is `op`."""
    if tensor is None or len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    return node if op is None or node.op == op else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """Distinct nodes reading `tensor` (a node reading it twice is listed once)."""
    seen: dict[int, gs.Node] = {}
    for node in tensor.outputs:
        seen.setdefault(id(node), node)
    return list(seen.values())


def uses_count(tensor: gs.Tensor, graph: gs.Graph | None = None) -> int:
    """How many node inputs read `tensor`, plus one if it is an output of `graph`."""
    return len(tensor.outputs) + int(graph is not None and is_graph_output(graph, tensor))


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    # Graphs have few outputs, so scanning them keeps a per-node check O(1) in practice.
    return any(out is tensor for out in graph.outputs)


def only_consumer(tensor: gs.Tensor, graph: gs.Graph | None = None) -> gs.Node | None:
    """The node that is the sole use of `tensor` (None if shared, unused or a graph output)."""
    if len(tensor.outputs) != 1 or (graph is not None and is_graph_output(graph, tensor)):
        return None
    return tensor.outputs[0]


def const_array(tensor: gs.Tensor | None) -> np.ndarray | None:
    """The value of a gs.Constant or of a Constant node's output; None when not constant."""
    if tensor is None:
        return None
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor, op="Constant")
    if node is None:
        return None
    if "value" in node.attrs:
        value = node.attrs["value"]
        return np.asarray(value.values if isinstance(value, gs.Constant)
                          else numpy_helper.to_array(value))
    for attr, dtype in _SCALAR_ATTRS.items():
        if attr in node.attrs:
            return np.asarray(node.attrs[attr], dtype=dtype)
    return None


def axes_of(node: gs.Node) -> np.ndarray | None:
    """The constant axes of a Squeeze/Unsqueeze/Reduce*: its second input from opset 13 (18
    for reductions), else its attribute; None when absent or not constant."""
    if len(node.inputs) > 1 and node.inputs[1].name:
        return const_array(node.inputs[1])
    axes = node.attrs.get("axes")
    return None if axes is None else np.asarray(axes, np.int64)


def contiguous(array: object) -> np.ndarray:
    """`array` in C order with its rank kept (np.ascontiguousarray makes a 0-d array 1-d)."""
    return np.asarray(array, order="C")


def const_key(array: object) -> tuple[str, tuple[int, ...], bytes]:
    """What makes two constants interchangeable: dtype, shape and bytes (a rank-0 `c` and a
    rank-1 `[c]` have the same bytes but are different constants)."""
    values = contiguous(array)
    digest = hashlib.blake2b(values.tobytes(), digest_size=16).digest()
    return values.dtype.str, values.shape, digest


def is_constant(tensor: gs.Tensor | None) -> bool:
    return const_array(tensor) is not None


def is_shared_constant(tensor: gs.Tensor) -> bool:
    """A constant read by more than one node input (changing it in place would change others)."""
    return len(tensor.outputs) > 1


def set_const_input(node: gs.Node, index: int, array: np.ndarray, name: str,
                    graph: gs.Graph | None = None) -> gs.Constant:
    """Make input `index` of `node` a constant holding `array` (appending when index ==
    len(inputs)). Given the graph, a constant only this node reads (no graph output) takes the
    values in place and keeps its name: the exporter's weight name, no longer new one."""
    current = node.inputs[index] if index < len(node.inputs) else None
    if (graph is not None and isinstance(current, gs.Constant) and len(current.outputs) == 1
            and not is_graph_output(graph, current)):
        current.values = contiguous(array)
        return current
    const = gs.Constant(name, contiguous(array))
    if index == len(node.inputs):
        node.inputs.append(const)
    else:
        node.inputs[index] = const
    return const


def adopt_outputs(keep: gs.Node, removed: gs.Node) -> None:
    """`keep` now produces `removed`'s output tensors, so their names (and graph outputs) stay;
    `removed` is detached and `keep`'s old outputs dangle until cleanup."""
    outputs = list(removed.outputs)
    detach(removed)
    keep.outputs.clear()
    # Mutate the synchronized lists in place: assigning a list would break gs's back-links.
    keep.outputs.extend(outputs)


def detach(node: gs.Node) -> None:
    """Clear node's outputs and inputs. gs's clear() finds the node in each tensor's back-list
    with list.remove, i.e. by ==, and Node.__eq__ compares (and logs) every node it passes in a
    shared constant's reader list; here the node is found by identity."""
    for tensors, field in ((node.outputs, "inputs"), (node.inputs, "outputs")):
        for tensor in tensors:
            links = getattr(tensor, field)
            for index, other in enumerate(links):
                if other is node:
                    list.__delitem__(links, index)  # the plain list: no back-link update
                    break
        list.clear(tensors)


def replace_uses(old: gs.Tensor, new: gs.Tensor, graph: gs.Graph | None = None) -> int:
    """Point every reader of `old` (and `graph`'s outputs, when given) at `new`; returns count."""
    count = 0
    for node in consumers(old):
        for index, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[index] = new
                count += 1
    if graph is not None:
        for index, tensor in enumerate(graph.outputs):
            if tensor is old:
                graph.outputs[index] = new
                count += 1
    return count


def chain(node: gs.Node, *op_types: str) -> list[gs.Node] | None:
    """Follow sole consumers from `node` through `op_types` (the first is node's own op)."""
    if not op_types or node.op != op_types[0]:
        return None
    found = [node]
    for op in op_types[1:]:
        if len(found[-1].outputs) != 1:
            return None
        nxt = only_consumer(found[-1].outputs[0])
        if nxt is None or nxt.op != op:
            return None
        found.append(nxt)
    return found


def name_maker(graph: gs.Graph) -> Callable[[str], str]:
    """A function returning names unused in `graph`; scans the graph once, not per call."""
    return NameMaker(set(tensor_map(graph)) | {n.name for n in graph.nodes})


class NameMaker:
    """`fresh(base)`: `base`, else `base_1`, `base_2`, ... the first one unused. A counter per
    base resumes where the last call stopped, so k names from one base (say ".s" from
    thousands of unnamed nodes) cost O(k) in all, not O(k²)."""

    def __init__(self, used: set[str]) -> None:
        self.used = used
        self.next_index: dict[str, int] = {}
        self.probes = 0  # names tried in all: a call-count guard for the tests

    def __call__(self, base: str) -> str:
        name, index = base, self.next_index.get(base, 0)
        if index:
            name = f"{base}_{index}"
        while name in self.used:
            self.probes += 1
            index += 1
            name = f"{base}_{index}"
        self.next_index[base] = index + 1
        self.used.add(name)
        return name


def tensor_map(graph: gs.Graph) -> dict[str, gs.Tensor]:
    """`graph.tensors()` (name -> tensor, unnamed ones omitted, a later tensor winning a
    shared name) without gs's per-tensor method calls, which dominate it on big graphs."""
    tensors: dict[str, gs.Tensor] = {}
    for tensor in graph.inputs:
        if tensor.name:
            tensors[tensor.name] = tensor
    for node in graph.nodes:
        for tensor in node.inputs:
            if tensor.name:
                tensors[tensor.name] = tensor
        for tensor in node.outputs:
            if tensor.name:
                tensors[tensor.name] = tensor
    for tensor in graph.outputs:
        if tensor.name:
            tensors[tensor.name] = tensor
    return tensors


def constants_in(graph: gs.Graph) -> Iterable[gs.Constant]:
    return (t for t in tensor_map(graph).values() if isinstance(t, gs.Constant))


def graph_size(graph: gs.Graph) -> tuple[int, int, int]:
    """(nodes, constant elements, constant bytes), from shapes so lazy values stay unloaded."""
    elements = size_bytes = 0
    itemsizes: dict[object, int] = {}
    for const in constants_in(graph):
        count = math.prod(const.shape) if const.shape is not None else 0
        if const.dtype not in itemsizes:
            itemsizes[const.dtype] = _itemsize(const.dtype)
        elements += count
        size_bytes += count * itemsizes[const.dtype]
    return len(graph.nodes), elements, size_bytes


def _itemsize(dtype: object) -> int:
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # an ONNX-only type (e.g. bfloat16 enum) that numpy cannot name
        return 0
