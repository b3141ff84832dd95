"""Parallel projections of one tensor as one: MatMuls (or Gemms) reading the same x with their
own constant weights [K, Ni] become x @ concat(W, axis=1), split back along the last axis into
the original outputs (attention's Q, K, V: three MatMuls -> MatMul + Split). The weight bytes
are moved, never copied: each weight must have no other reader, so the file does not grow."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from . import transform
from .graphio import inherit_metadata, rank_finder
from .graphops import cleanup as drop_dead
from .graphops import toposort
from .patterns import (
    const_array,
    const_key,
    detach,
    is_graph_output,
    name_maker,
    nodes_of,
    only_consumer,
)
from .report import TransformReport


@dataclass(frozen=True)
class Branch:
    """One projection: `node` computes x @ weight (as [K, N]); `add` (a MatMul's sole reader)
    adds `bias` [N], or a Gemm's own C is `bias`; `out` is what the branch finally writes."""

    node: gs.Node
    weight: np.ndarray
    bias: np.ndarray | None
    add: gs.Node | None

    @property
    def width(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out(self) -> gs.Tensor:
        return (self.add or self.node).outputs[0]


@transform("merge-parallel-matmuls")
def merge_parallel_matmuls(graph: gs.Graph) -> TransformReport:
    """Merge MatMuls/Gemms (alpha = beta = 1) that read one tensor with constant 2-D weights
    of one K and dtype into one on the concatenated weights (+ concatenated bias Adds) and a
    Split; refuses shared weights or biases, another K or dtype and an input of unknown rank."""
    report = TransformReport("merge-parallel-matmuls")
    merge_projections(graph, report)
    if report.rewritten:
        toposort(drop_dead(graph))
    return report


def merge_projections(graph: gs.Graph, report: TransformReport) -> None:
    """Every group of parallel projections merged in place."""
    readers: dict[int, list[gs.Node]] = defaultdict(list)
    for node in nodes_of(graph, "MatMul", "Gemm"):
        if len(node.inputs) >= 2 and len(node.outputs) == 1 and \
                const_array(node.inputs[1]) is not None:
            readers[id(node.inputs[0])].append(node)
    rank, fresh = rank_finder(graph), None
    for nodes in readers.values():
        if len(nodes) < 2:
            continue
        for group in _groups(graph, nodes, rank(nodes[0].inputs[0]), report):
            for branch in group:  # labelled before detaching, which empties their outputs
                report.rewrote(branch.node)
            fresh = fresh or name_maker(graph)
            _merge(graph, group, rank(group[0].node.inputs[0]), fresh)


def _groups(graph: gs.Graph, nodes: list[gs.Node], rank: int | None, report: TransformReport
            ) -> list[list[Branch]]:
    """The readers of one x, as groups that can merge (the others skipped, with reasons)."""
    if rank is None or rank < 1:
        for node in nodes:
            report.skip(node, "its input's rank is unknown")
        return []
    by_key: dict[tuple, list[Branch]] = defaultdict(list)
    for node in nodes:
        branch = _branch(graph, node)
        if isinstance(branch, str):
            report.skip(node, branch)
            continue
        by_key[(node.op, node.attrs.get("transB", 0), branch.weight.shape[0],
                branch.weight.dtype.str, node.op == "Gemm" and branch.bias is not None)
               ].append(branch)
    groups = []
    for group in by_key.values():
        reason = _refuse(group, len(by_key))
        if reason is not None:
            for branch in group:
                report.skip(branch.node, reason)
        else:
            groups.append(_with_biases(graph, group, rank))
    return groups


def _refuse(group: list[Branch], kinds: int) -> str | None:
    if len(group) < 2:
        return ("no other projection of its input has its K, dtype, op and bias form"
                if kinds > 1 else "no other projection of its input")
    keys = {const_key(branch.weight) for branch in group}
    if len(keys) < len(group):  # dedupe would share them: concatenating would copy bytes
        return "two of the weights are byte-identical"
    return None


def _branch(graph: gs.Graph, node: gs.Node) -> Branch | str:
    """The node as a projection x @ W [K, N] (+ its Gemm bias), or why it is not one."""
    tensor = node.inputs[1]
    weight = const_array(tensor)
    if _shared(graph, tensor):
        return "its weight has other readers"
    if weight.ndim != 2 or weight.size == 0:
        return "its weight is not a non-empty 2-D constant"
    if node.op == "MatMul":
        return Branch(node, weight, None, None)
    attrs = node.attrs
    if attrs.get("transA", 0) or float(attrs.get("alpha", 1.0)) != 1.0 or \
            float(attrs.get("beta", 1.0)) != 1.0:
        return "a Gemm with transA or alpha/beta other than 1"
    weight = weight.T if attrs.get("transB", 0) else weight
    if len(node.inputs) < 3 or not node.inputs[2].name:
        return Branch(node, weight, None, None)
    bias = _bias_of(graph, node.inputs[2], weight)
    return bias if isinstance(bias, str) else Branch(node, weight, bias, None)


def _bias_of(graph: gs.Graph, tensor: gs.Tensor, weight: np.ndarray) -> np.ndarray | str:
    """A constant row bias [N] or [1, N] of the weight's dtype and no other reader, as [N]."""
    bias = const_array(tensor)
    if bias is None or bias.dtype != weight.dtype or \
            bias.shape not in ((weight.shape[1],), (1, weight.shape[1])):
        return "its bias is not a constant [N] of the weight's dtype"
    if _shared(graph, tensor):
        return "its bias has other readers"
    return bias.reshape(-1)


def _shared(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return len(tensor.outputs) != 1 or is_graph_output(graph, tensor)


def _with_biases(graph: gs.Graph, group: list[Branch], rank: int) -> list[Branch]:
    """MatMul branches with the bias Add each one's sole reader, when every branch has one
    (a [1, N] bias only on a product of rank >= 2, where it broadcasts as [N] does)."""
    if group[0].node.op != "MatMul":
        return group
    biased = []
    for branch in group:
        add = only_consumer(branch.node.outputs[0], graph)
        if add is None or add.op != "Add" or len(add.inputs) != 2:
            return group
        other = add.inputs[1] if add.inputs[0] is branch.node.outputs[0] else add.inputs[0]
        bias = _bias_of(graph, other, branch.weight) if other is not branch.node.outputs[0] \
            else "adds itself"
        if isinstance(bias, str) or (rank < 2 and const_array(other).ndim != 1):
            return group
        biased.append(Branch(branch.node, branch.weight, bias, add))
    return biased


def _merge(graph: gs.Graph, group: list[Branch], rank: int, fresh) -> None:
    """One MatMul/Gemm (+ Add) on the concatenated operands, then a Split that writes the
    branches' own output tensors (their names, graph outputs included, stay)."""
    first = group[0].node
    x, base = first.inputs[0], first.name or first.op
    trans = int(first.attrs.get("transB", 0)) if first.op == "Gemm" else 0
    weight = np.concatenate([b.weight for b in group], axis=1)
    weight = gs.Constant(fresh(f"{first.inputs[1].name or base}_merged"),
                         np.ascontiguousarray(weight.T if trans else weight))
    bias = None
    if group[0].bias is not None:
        bias = gs.Constant(fresh(f"{base}_merged_bias"),
                           np.concatenate([b.bias for b in group]))
    outs = [b.out for b in group]
    made = _merged_value(fresh(f"{base}_merged"), outs, x.dtype)
    nodes = []
    if first.op == "Gemm":
        inputs = [x, weight] + ([bias] if bias is not None else [])
        nodes.append(gs.Node("Gemm", fresh(f"{base}.merged"), {"transB": trans}, inputs, [made]))
    else:
        nodes.append(gs.Node("MatMul", fresh(f"{base}.merged"), inputs=[x, weight],
                             outputs=[made]))
        if bias is not None:
            biased = _merged_value(fresh(f"{base}_merged_biased"), outs, x.dtype)
            nodes.append(gs.Node("Add", fresh(f"{base}.merged_bias"), inputs=[made, bias],
                                 outputs=[biased]))
            made = biased
    for branch in group:
        detach(branch.node)
        if branch.add is not None:
            detach(branch.add)
    sizes = gs.Constant(fresh(f"{base}_split_sizes"),
                        np.asarray([b.width for b in group], dtype=np.int64))
    nodes.append(_split(graph, fresh(f"{base}.split"), made, sizes,
                        rank - 1 if first.op == "MatMul" else 1, outs))
    for node in nodes:
        inherit_metadata(graph, node, first)
        graph.nodes.append(node)


def _merged_value(name: str, outs: list[gs.Tensor], dtype) -> gs.Variable:
    """The concatenated result: the branches' shape with the widths summed, when known."""
    shape = outs[0].shape
    if shape and all(o.shape is not None and list(o.shape[:-1]) == list(shape[:-1]) and
                     isinstance(o.shape[-1], (int, np.integer)) for o in outs):
        shape = [*shape[:-1], sum(int(o.shape[-1]) for o in outs)]
    else:
        shape = None
    return gs.Variable(name, dtype=dtype, shape=shape)


def _split(graph: gs.Graph, name: str, data: gs.Tensor, sizes: gs.Constant, axis: int,
           outs: list[gs.Tensor]) -> gs.Node:
    """Split on `axis`: the sizes an input from opset 13 on (18 too: num_outputs is only the
    alternative to it), an attribute before."""
    if (graph.opset or 13) >= 13:
        return gs.Node("Split", name, {"axis": axis}, [data, sizes], outs)
    return gs.Node("Split", name, {"axis": axis, "split": sizes.values.tolist()}, [data], outs)
