"""fold-shapes' linear-layer rewrite: Reshape(x [.., C] -> [M, C]) -> Gemm/MatMul -> Reshape back
to [.., K] is one batched MatMul (+ a bias Add) on x itself, as exporters write nn.Linear on
[B, N, C] (DETR, Swin, MobileViT). onnxruntime (ORT_ENABLE_ALL) turns MatMul + Add on [1, 197, 768]
back into Reshape -> Gemm -> Reshape itself: the same kernels, the same latency (measured, 1
thread), so the file keeps the 2-node form other runtimes read without reshapes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from .graphio import inherit_metadata
from .patterns import (
    adopt_outputs,
    const_array,
    detach,
    name_maker,
    nodes_of,
    only_consumer,
    producer,
)
from .report import TransformReport


def linear_rows(graph: gs.Graph, report: TransformReport) -> None:
    """Collapse Reshape -> Gemm|MatMul -> Reshape into MatMul(x, W) [+ Add(b)] where the first
    Reshape only merges x's leading dims and the second provably restores them."""
    candidates = nodes_of(graph, "Gemm", "MatMul")
    fresh = name_maker(graph) if candidates else None
    for node in candidates:
        plan = _plan(graph, node, fresh)
        if plan is None:
            continue
        first, second, x, weight, bias = plan
        base = node.name or node.op
        out = gs.Variable(fresh(f"{base}_rows"), dtype=x.dtype)
        matmul = gs.Node("MatMul", fresh(f"{base}.rows"), inputs=[x, weight], outputs=[out])
        last = matmul
        if bias is not None:
            last = gs.Node("Add", fresh(f"{base}.bias"), inputs=[out, bias],
                           outputs=[gs.Variable(fresh(f"{base}_biased"), dtype=x.dtype)])
        for new in {id(matmul): matmul, id(last): last}.values():
            inherit_metadata(graph, new, node)
            graph.nodes.append(new)
        adopt_outputs(last, second)
        detach(node)
        detach(first)
        report.rewrote(node)


Plan = tuple[gs.Node, gs.Node, gs.Tensor, gs.Tensor, gs.Tensor | None]


def _plan(graph: gs.Graph, node: gs.Node, fresh: Callable[[str], str]) -> Plan | None:
    if not node.inputs or not node.outputs:
        return None
    first = producer(node.inputs[0], op="Reshape")
    second = only_consumer(node.outputs[0], graph)
    if first is None or second is None or second.op != "Reshape" or len(second.inputs) < 2 \
            or second.inputs[0] is not node.outputs[0]:
        return None
    if len(first.inputs) < 2 or only_consumer(first.outputs[0], graph) is not node:
        return None
    x = first.inputs[0]
    lead = _merged_lead(x, const_array(first.inputs[1]))
    if lead is None:
        return None
    operands = _operands(node, fresh)
    if operands is None:
        return None
    weight, bias, k = operands
    if weight is first.outputs[0] or not (_restores(const_array(second.inputs[1]), lead, k)
                                          or _inferred_restore(second.outputs[0], lead, k)):
        return None
    return first, second, x, weight, bias


def _merged_lead(x: gs.Tensor, target: np.ndarray | None) -> list | None:
    """x's leading dims when `target` reshapes x [..., C] (rank >= 3, C known) to [M, C]: with
    the last dim kept, row-major order makes each row one x[..., :] vector."""
    shape = x.shape
    if shape is None or len(shape) < 3 or target is None or target.shape != (2,):
        return None
    c = shape[-1]
    if not isinstance(c, (int, np.integer)) or c <= 0 or int(target[1]) != c:
        return None
    if int(target[0]) == 0:  # copies a dim (or is an empty reshape): not a plain merge
        return None
    return list(shape[:-1])


Operands = tuple[gs.Tensor, gs.Tensor | None, int]


def _operands(node: gs.Node, fresh: Callable[[str], str]) -> Operands | None:
    """(W as [C, K], bias as [K] or None, K) for a Gemm/MatMul on [M, C] rows; a transposed or
    alpha-scaled Gemm weight (a beta-scaled bias) becomes a new constant."""
    if node.op == "MatMul":
        w = node.inputs[1] if len(node.inputs) == 2 else None
        if w is None or w.shape is None or len(w.shape) != 2:
            return None
        k = w.shape[1]
        return (w, None, int(k)) if isinstance(k, (int, np.integer)) and k > 0 else None
    attrs = node.attrs
    w = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    if attrs.get("transA", 0) or w is None or w.ndim != 2 or \
            not np.issubdtype(w.dtype, np.floating):
        return None
    alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
    w = w.T if attrs.get("transB", 0) else w
    k = w.shape[1]
    weight = node.inputs[1]
    if alpha != 1.0 or attrs.get("transB", 0):
        scaled = np.ascontiguousarray(w * w.dtype.type(alpha))
        weight = gs.Constant(fresh(f"{node.inputs[1].name}_rows"), scaled)
    if len(node.inputs) < 3 or not node.inputs[2].name:
        return weight, None, k
    b = const_array(node.inputs[2])
    if b is None or b.dtype != w.dtype or b.shape not in ((k,), (1, k)):
        return None  # a [M, K] or row-broadcast bias has no per-column [K] form
    bias = node.inputs[2]
    if beta != 1.0 or b.shape != (k,):
        bias = gs.Constant(fresh(f"{node.inputs[2].name}_rows"),
                           np.ascontiguousarray((b * b.dtype.type(beta)).reshape(k)))
    return weight, bias, k


def _restores(target: np.ndarray | None, lead: list, k: int) -> bool:
    """Whether Reshape([M, K], target) is provably lead + [K]: every entry equals x's dim, or is
    the one -1, which then must be that dim since the element count is prod(lead)·K."""
    if target is None or target.ndim != 1 or len(target) != len(lead) + 1 or int(target[-1]) != k:
        return False
    wild = 0
    for want, dim in zip(target[:-1].tolist(), lead):
        if want == -1:
            wild += 1
        elif not (isinstance(dim, (int, np.integer)) and want == dim and want > 0):
            return False
    return wild <= 1


def _inferred_restore(out: gs.Tensor, lead: list, k: int) -> bool:
    """A computed target (Concat(Shape(x)[0], N, K) under a symbolic batch) whose result shape
    inference proved to be lead + [K]: equal sizes, or the same symbolic name."""
    shape = out.shape
    if shape is None or len(shape) != len(lead) + 1 or shape[-1] != k:
        return False
    return all(dim is not None and want == dim and (not isinstance(dim, str) or dim)
               for want, dim in zip(shape[:-1], lead))


def reshape_past_linear(graph: gs.Graph, report: TransformReport) -> None:
    """Reshape(x, [..., C]) -> MatMul(W [C, K]) [-> Add(b [K])] -> Reshape(constant target):
    the first Reshape goes, the MatMul reads x. A Reshape that keeps the last dim C keeps
    every row vector, in order, so it commutes with the per-row x @ W + b and the second
    Reshape then sees the same elements in the same order (Swin's window attention)."""
    for matmul in nodes_of(graph, "MatMul"):
        first = producer(matmul.inputs[0], op="Reshape") if len(matmul.inputs) == 2 else None
        if first is None or only_consumer(first.outputs[0], graph) is not matmul:
            continue
        chain = _row_chain(graph, matmul)
        if chain is None or not _keeps_last_dim(first, matmul.inputs[1]):
            continue
        for node in chain[:-1]:  # their outputs take x's leading dims now
            node.outputs[0].shape = None
        matmul.inputs[0] = first.inputs[0]
        detach(first)
        report.rewrote(first)


def _row_chain(graph: gs.Graph, matmul: gs.Node) -> list[gs.Node] | None:
    """[MatMul, (Add,) Reshape] when each output has the next node as its only reader, the
    Add's other operand is a constant row bias of rank <= 2 (x and y have at least that rank)
    and the Reshape's target is a constant that copies no input dim (a 0 would copy one of the
    changed leading dims)."""
    chain, node = [matmul], only_consumer(matmul.outputs[0], graph)
    k = matmul.inputs[1].shape[-1] if matmul.inputs[1].shape else None
    if node is not None and node.op == "Add" and len(node.inputs) == 2:
        other = node.inputs[1] if node.inputs[0] is matmul.outputs[0] else node.inputs[0]
        bias = const_array(other)
        if bias is None or other is matmul.outputs[0] or bias.shape not in ((k,), (1, k), (1,), ()):
            return None
        chain.append(node)
        node = only_consumer(node.outputs[0], graph)
    if node is None or node.op != "Reshape" or len(node.inputs) < 2 or \
            node.inputs[0] is not chain[-1].outputs[0]:
        return None
    target = const_array(node.inputs[1])
    if target is None or (np.any(target == 0) and not node.attrs.get("allowzero", 0)):
        return None
    return [*chain, node]


def _keeps_last_dim(first: gs.Node, weight: gs.Tensor) -> bool:
    """Reshape(x) -> y with x and y of rank >= 2 and the same static last dim, which is the
    2-D weight's row count (MatMul then maps each last-dim vector on its own)."""
    x, y = first.inputs[0].shape, first.outputs[0].shape
    if weight is first.outputs[0] or weight.shape is None or len(weight.shape) != 2:
        return False
    if x is None or y is None or len(x) < 2 or len(y) < 2:
        return False
    c = x[-1]
    return isinstance(c, (int, np.integer)) and c > 0 and y[-1] == c == weight.shape[0]
