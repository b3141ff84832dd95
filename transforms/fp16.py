"""Half precision for deployment. `fp16-linear` stores big Gemm/MatMul layers in float16 (the
MegEngine guide's Linear recipe); `fp16` runs a whole graph in float16 except blocked ops. Graph
inputs and outputs stay float32, and Casts appear only where precision changes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from tm2onnx.errors import TransformError

from . import transform
from .dtypes import (
    F16,
    F32,
    Slots,
    add_cast,
    dtype_finder,
    float16_slots,
    fp16_range_reason,
    input_reason,
    nodes_count,
)
from .graphops import tidy, toposort
from .patterns import (
    constants_in,
    consumers,
    is_graph_output,
    name_maker,
    nodes_of,
    only_consumer,
    replace_uses,
)
from .report import TransformReport

# Ops `fp16` keeps in float32 by default. Reductions and normalizations sum many elements (a
# sum past 65504 overflows; 11 mantissa bits drop small addends); Exp and Pow overflow on modest
# inputs (exp(11.1) > 65504) and Log/Sqrt/Reciprocal sit beside them in such formulas;
# Resize/RoiAlign/Range/TopK/NonMaxSuppression compute coordinates, boxes or indices, where
# fp16 misplaces pixels and reorders near-ties.
DEFAULT_BLOCK: tuple[str, ...] = (
    "Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization",
    "GroupNormalization", "ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2",
    "ReduceLogSumExp", "ReduceProd", "CumSum", "Exp", "Log", "Pow", "Sqrt", "Reciprocal",
    "Resize", "RoiAlign", "Range", "TopK", "NonMaxSuppression")

# Ops whose second input divides: there a tiny nonzero constant flushed by fp16 gives inf.
DIVIDING = ("Div",)


@dataclass
class _Layer:
    """One Linear: a Gemm, a MatMul, or a MatMul and the Add of its constant bias."""

    nodes: list[gs.Node]
    weight: gs.Constant
    bias: gs.Constant | None


@transform("fp16-linear")
def fp16_linear(graph: gs.Graph, *, min_params: int = 100 * 1024) -> TransformReport:
    """Store Gemm/MatMul(+bias Add) layers with >= min_params weights in fp16, Cast around them
    (one pair per direct chain); refuses weights not constant, beyond fp16 range or shared with
    a node that stays fp32."""
    report = TransformReport("fp16-linear", verb="converted")
    layers = []
    for node in nodes_of(graph, "Gemm", "MatMul"):
        layer = _layer(graph, node, int(min_params))
        if isinstance(layer, str):
            report.skip(node, layer)
        else:
            layers.append(layer)
    layers = _accept_shared(graph, layers, report)
    if not layers:
        return report
    casts, fresh = nodes_count(graph, "Cast"), name_maker(graph)
    owned = {id(node) for layer in layers for node in layer.nodes}
    halves: dict[int, gs.Tensor] = {}
    for layer in layers:  # graph order is topological: a producer layer comes first
        report.rewrote(layer.nodes[0])
        _rewrite(graph, layer, owned, halves, fresh)
    tidy(graph)  # drops the cast-backs that chained layers no longer read
    report.note(f"inserted {nodes_count(graph, 'Cast') - casts} Cast nodes")
    return report


def _layer(graph: gs.Graph, node: gs.Node, min_params: int) -> _Layer | str:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    if reason := input_reason(graph, weight, "weight"):
        return reason
    if weight.values.ndim != 2:
        return f"weight {weight.name} is {weight.values.ndim}-D, not 2-D"
    if weight.values.size < min_params:
        rows, cols = weight.values.shape
        return f"{rows}×{cols} = {weight.values.size} weights < min_params {min_params}"
    nodes, bias = [node], None
    if node.op == "Gemm" and len(node.inputs) > 2 and node.inputs[2].name:
        bias = node.inputs[2]
        if reason := input_reason(graph, bias, "bias"):
            return reason
    elif node.op == "MatMul" and (add := _bias_add(graph, node)) is not None:
        nodes, bias = [node, add[0]], add[1]
    for param in (weight, bias):
        if param is not None and (reason := fp16_range_reason(param)):
            return reason
    return _Layer(nodes, weight, bias)


def _bias_add(graph: gs.Graph, matmul: gs.Node) -> tuple[gs.Node, gs.Constant] | None:
    """The Add that only adds a float32 constant to the MatMul's output (the N-D Linear export)."""
    add = only_consumer(matmul.outputs[0], graph)
    if add is None or add.op != "Add" or len(add.inputs) != 2:
        return None
    other = [t for t in add.inputs if t is not matmul.outputs[0]]
    if len(other) != 1 or input_reason(graph, other[0], "bias"):
        return None
    return add, other[0]


def _accept_shared(graph: gs.Graph, layers: list[_Layer], report: TransformReport
                   ) -> list[_Layer]:
    """Drop layers whose weight another node reads in fp32, until none is left to drop (a weight
    tied between two converted layers is converted once; duplicating it would grow the model)."""
    while True:
        owned = {id(node) for layer in layers for node in layer.nodes}
        refused = {}
        for layer in layers:
            others = [n for n in consumers(layer.weight) if id(n) not in owned]
            if others or is_graph_output(graph, layer.weight):
                who = (others[0].name or others[0].op) if others else "a graph output"
                refused[id(layer)] = f"weight {layer.weight.name} is shared with {who}, " \
                                     "which stays fp32"
        if not refused:
            return layers
        for layer in layers:
            if id(layer) in refused:
                report.skip(layer.nodes[0], refused[id(layer)])
        layers = [layer for layer in layers if id(layer) not in refused]


def _rewrite(graph: gs.Graph, layer: _Layer, owned: set[int], halves: dict[int, gs.Tensor],
             fresh: Callable[[str], str]) -> None:
    """Make `layer` compute in fp16; `halves` maps an fp32 tensor to its fp16 twin, so a layer
    reading another converted layer's output (or an input already cast) needs no new Cast."""
    for node in layer.nodes:
        for index, tensor in enumerate(node.inputs):
            if tensor is layer.weight or tensor is layer.bias:
                _halve_param(graph, node, index, owned, fresh)
    first, last = layer.nodes[0], layer.nodes[-1]
    x = first.inputs[0]
    if id(x) not in halves:
        halves[id(x)] = add_cast(graph, fresh, x, F16)
    first.inputs[0] = halves[id(x)]
    for node in layer.nodes[:-1]:
        node.outputs[0].dtype = F16
    out = last.outputs[0]
    out16 = gs.Variable(fresh(f"{out.name}_fp16"), dtype=F16, shape=out.shape)
    last.outputs[0] = out16
    add_cast(graph, fresh, out16, F32, out=out)
    halves[id(out)] = out16


def _halve_param(graph: gs.Graph, node: gs.Node, index: int, owned: set[int],
                 fresh: Callable[[str], str]) -> None:
    """Convert in place when only converted layers read the constant, else give `node` a copy
    (only a bias can get here: shared weights were refused)."""
    const = node.inputs[index]
    if const.values.dtype == F16:
        return  # a weight tied between two layers, converted with the first
    if all(id(n) in owned for n in consumers(const)) and not is_graph_output(graph, const):
        const.values = const.values.astype(F16)
    else:
        node.inputs[index] = gs.Constant(fresh(f"{const.name}_fp16"), const.values.astype(F16))


@transform("fp16")
def fp16(graph: gs.Graph, *, block: tuple[str, ...] | str = DEFAULT_BLOCK
         ) -> TransformReport:
    """Run float32 ops in fp16 except `block` ones (Softmax, norms, reductions, Exp/Log/Pow,
    Resize...), Casting at graph I/O and around kept ops; keeps fp32 a node reading a constant
    beyond fp16 range or of unknown type or op; refuses graphs with If/Loop/Scan or Q/DQ."""
    report = TransformReport("fp16", verb="converted")
    block = tuple(block.split(",")) if isinstance(block, str) else tuple(block)
    if unknown := [op for op in block if not onnx.defs.has(op)]:
        raise TransformError(f"fp16 block list names unknown op(s) {', '.join(unknown)}",
                             hint="ONNX op types are case-sensitive, e.g. Softmax")
    if loops := [n for n in graph.nodes if any(isinstance(v, gs.Graph) for v in n.attrs.values())]:
        report.skip(loops[0], "control-flow subgraphs (If/Loop/Scan) are not converted")
        return report
    if qdq := [n for n in graph.nodes if n.op in ("QuantizeLinear", "DequantizeLinear")]:
        # fp16 around Q/DQ would change the quantized values and stop int8 kernel fusion.
        report.skip(qdq[0], "a quantized (QDQ) graph is deployed as int8, not fp16")
        return report
    half = _plan(graph, frozenset(block), report)
    if not half:
        return report
    casts, fresh, original = nodes_count(graph, "Cast"), name_maker(graph), list(graph.nodes)
    halved = _flip_constants(graph, half)
    flipped = _flip_outputs(graph, half) | halved  # ids of the tensors now fp16
    memo = _split_graph_outputs(graph, flipped, fresh)
    copies = _fix_edges(original, half, flipped, memo, fresh, graph)
    toposort(graph)
    report.note(f"inserted {nodes_count(graph, 'Cast') - casts} Cast nodes; {len(halved)} "
                f"constants to fp16, {copies} fp16 copies of constants also read in fp32")
    return report


def _plan(graph: gs.Graph, block: frozenset[str], report: TransformReport) -> dict[int, Slots]:
    """Slots of each node that will run in fp16, by id; kept nodes are reported with why."""
    dtype, half = dtype_finder(graph), {}
    for node in graph.nodes:
        slots = float16_slots(node, graph.opset, dtype)
        if slots is None:
            continue
        reason = "in the block list" if node.op in block else (
            slots if isinstance(slots, str) else _range_reason(node, slots[0]))
        if reason:
            report.skip(node, f"kept fp32: {reason}")
        else:
            report.rewrote(node)
            half[id(node)] = slots
    return half


def _range_reason(node: gs.Node, half_inputs: list[bool]) -> str | None:
    return next((reason for index, (tensor, half) in enumerate(zip(node.inputs, half_inputs))
                 if half and (reason := fp16_range_reason(
                     tensor, divisor=node.op in DIVIDING and index == 1))), None)


def _flip_outputs(graph: gs.Graph, half: dict[int, Slots]) -> set[int]:
    flipped = set()
    for node in graph.nodes:
        for tensor, to_half in zip(node.outputs, half.get(id(node), ([], []))[1]):
            if to_half:
                tensor.dtype = F16
                flipped.add(id(tensor))
    return flipped


def _flip_constants(graph: gs.Graph, half: dict[int, Slots]) -> set[int]:
    """Halve in place the float32 constants read only by fp16 slots (range checked in _plan)."""
    flipped = set()
    for const in list(constants_in(graph)):
        if const.dtype != F32 or not const.outputs or is_graph_output(graph, const):
            continue
        if all(id(node) in half and half[id(node)][0][index] for node in consumers(const)
               for index, tensor in enumerate(node.inputs) if tensor is const):
            const.values = np.asarray(const.values).astype(F16)
            flipped.add(id(const))
    return flipped


def _split_graph_outputs(graph: gs.Graph, flipped: set[int], fresh: Callable[[str], str]
                         ) -> dict[tuple[int, str], gs.Tensor]:
    """A graph output computed in fp16 keeps its name and fp32 type behind a Cast; its readers
    inside the graph read the fp16 twin. Returns the Cast as a memo entry for _fix_edges."""
    memo = {}
    for out in list(graph.outputs):
        if id(out) not in flipped or not isinstance(out, gs.Variable):
            continue
        twin = gs.Variable(fresh(f"{out.name}_fp16"), dtype=F16, shape=out.shape)
        for node in list(out.inputs):
            node.outputs[next(i for i, t in enumerate(node.outputs) if t is out)] = twin
        replace_uses(out, twin)
        add_cast(graph, fresh, twin, F32, out=out)
        flipped.discard(id(out))
        flipped.add(id(twin))
        memo[(id(twin), F32.str)] = out
    return memo


def _fix_edges(nodes: list[gs.Node], half: dict[int, Slots], flipped: set[int],
               memo: dict[tuple[int, str], gs.Tensor], fresh: Callable[[str], str],
               graph: gs.Graph) -> int:
    """Give each input the precision its slot wants: a (shared) Cast for variables, a converted
    copy for constants. Returns how many constants were copied."""
    copies = 0
    for node in nodes:
        wanted = half.get(id(node), ([], []))[0]
        for index, tensor in enumerate(node.inputs):
            want16 = index < len(wanted) and wanted[index]
            if want16 == (id(tensor) in flipped):
                continue
            dtype = F16 if want16 else F32
            key = (id(tensor), dtype.str)
            if key not in memo:
                if isinstance(tensor, gs.Constant):
                    memo[key] = gs.Constant(fresh(f"{tensor.name}_{dtype.name}"),
                                            np.asarray(tensor.values).astype(dtype))
                    copies += 1
                else:
                    memo[key] = add_cast(graph, fresh, tensor, dtype)
            node.inputs[index] = memo[key]
    return copies
