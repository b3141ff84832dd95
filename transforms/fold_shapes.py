"""Shape-aware folding: give tensors their inferred shapes, fold the shape arithmetic that makes
constant, drop no-op Identity/Dropout/Cast/Reshape/Transpose/Expand without copying weights,
fuse a 2-D MatMul + bias Add into Gemm, and drop the reshapes around a Linear layer on 3-D."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from . import transform
from .cleanup import (
    cleanup_counting,
    dedupe_constants,
    default_limit,
    fold_constants,
    static_shape,
)
from .cse import merge_duplicates
from .dtypes import as_dtype
from .gathers import concat_gathers, unsqueezed_gathers, whole_gather
from .graphio import infer_onto
from .graphops import cleanup as drop_dead
from .graphops import may_fold, toposort
from .linear_rows import linear_rows, reshape_past_linear
from .patterns import (
    adopt_outputs,
    const_array,
    detach,
    is_graph_output,
    name_maker,
    nodes_of,
    only_consumer,
    producer,
    replace_uses,
)
from .report import TransformReport, label
from .reshape_targets import pin_reshape_targets, static_copied_dims
from .slices import merge_slices
from .unit_dims import (
    copies_through,
    flattens_as_reshapes,
    reshapes_before_transposes,
    squeezes_undone,
    transposes_as_reshapes,
)


def _same_static_shape(node: gs.Node) -> bool:
    shape = static_shape(node.inputs[0])
    return shape is not None and shape == static_shape(node.outputs[0])


def _identity_perm(node: gs.Node) -> bool:
    perm = node.attrs.get("perm")
    return perm is not None and list(perm) == list(range(len(perm)))


def _same_dtype(node: gs.Node) -> bool:
    source = const_array(node.inputs[0])
    dtype = source.dtype if source is not None else as_dtype(node.inputs[0].dtype)
    return dtype is not None and dtype == as_dtype(node.attrs.get("to"))


def _inference_dropout(node: gs.Node) -> bool:
    mask_used = len(node.outputs) > 1 and node.outputs[1].outputs
    training = const_array(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else False
    return not mask_used and training is not None and not bool(np.any(training))


def _zero_pads(node: gs.Node) -> bool:
    pads = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    mode = node.attrs.get("mode", "constant")
    return pads is not None and not np.any(pads) and mode in ("constant", b"constant")


def _whole_slice(node: gs.Node) -> bool:
    """Same static shape in and out with unit steps: every element kept, in order."""
    steps = const_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else 1
    return steps is not None and bool(np.all(steps == 1)) and _same_static_shape(node)


def _first(test: Callable[[gs.Node], bool]) -> Callable[[gs.Node], int | None]:
    return lambda node: 0 if test(node) else None


def _unit_operand(unit: float, sides: tuple[int, ...]) -> Callable[[gs.Node], int | None]:
    """x+0, 0+x, x-0, x*1, 1*x, x/1: the index of x when the other input is a constant equal
    to `unit` everywhere and the output has x's static shape (no broadcast grows it)."""
    def passed_through(node: gs.Node) -> int | None:
        for side in sides:
            value = const_array(node.inputs[side])
            if value is not None and value.size and bool(np.all(value == unit)):
                kept = node.inputs[1 - side]
                if _keeps_shape(kept, value, node.outputs[0]):
                    return 1 - side
        return None
    return passed_through


def _keeps_shape(kept: gs.Tensor, unit: np.ndarray, out: gs.Tensor) -> bool:
    """Broadcasting `unit` leaves `kept`'s shape: both static and equal, or `unit` of a rank
    `kept` has at least with each of its dims 1 or equal to `kept`'s known size there (a
    symbolic dim could be 1 and grow to the constant's size, so it must meet a 1)."""
    shape = static_shape(kept)
    if shape is not None and shape == static_shape(out):
        return True
    if unit.ndim == 0:
        return True
    if kept.shape is None or unit.ndim > len(kept.shape):
        return False
    tail = kept.shape[len(kept.shape) - unit.ndim:]
    return all(d == 1 or (isinstance(k, (int, np.integer)) and k == d)
               for d, k in zip(unit.shape, tail))


# op -> the index of the input this node passes through unchanged, or None.
NO_OPS: dict[str, Callable[[gs.Node], int | None]] = {
    "Identity": lambda node: 0,
    "Dropout": _first(_inference_dropout),
    "Cast": _first(_same_dtype),
    "Reshape": _first(_same_static_shape),
    "Expand": _first(_same_static_shape),
    "Transpose": _first(_identity_perm),
    "Pad": _first(_zero_pads),
    "Slice": _first(_whole_slice),
    "Gather": _first(whole_gather),
    "Concat": _first(lambda node: len(node.inputs) == 1),
    "Split": _first(lambda node: len(node.outputs) == 1),  # one piece: the whole input
    "Add": _unit_operand(0, (1, 0)),
    "Sub": _unit_operand(0, (1,)),
    "Mul": _unit_operand(1, (1, 0)),
    "Div": _unit_operand(1, (1,)),
}


# Each round folds what the last inference made constant; a value-level op (Mod, Range,
# Where, ScatterND) between a Shape and a Reshape target stops onnx's data propagation, so a
# chain of them (Swin's shifted-window mask and padding: 7 rounds) needs a round per link.
# The loop ends at the first round that folds nothing; the cap bounds pathological graphs.
MAX_ROUNDS = 32


@transform("fold-shapes")
def fold_shapes(graph: gs.Graph, *, max_fold_bytes: int | None = None) -> TransformReport:
    """Infer shapes (symbolic dims kept), fold Shape/Gather/Concat/... arithmetic they make
    constant, drop no-ops (Identity, Dropout, same-type Cast, same-shape Reshape, x+0, ...)
    reusing the weights, re-cut constant-index Gathers (Unsqueeze(Gather(x, i)) is
    Gather(x, [i]); a Concat of Gathers of x is one), merge Reshape/Transpose pairs, fuse 2-D
    MatMul+Add into Gemm, drop the Reshapes around a Linear layer on [B, N, C] (leaving
    MatMul + Add); refuses to bypass a graph output fed by an input or constant."""
    report = TransformReport("fold-shapes", verb="removed")
    # Each fold can pin shapes that the next inference turns into constants: rounds until none
    # folds anything.
    for _ in range(MAX_ROUNDS):
        _rewrite_static(graph, report)
        if not may_fold(graph):
            break
        before = len(report.rewritten)
        limit = max_fold_bytes if max_fold_bytes is not None else default_limit(graph)
        _fold_counting(graph, limit, report)
        if len(report.rewritten) == before:  # nothing folded: inference learns nothing new
            break
    else:
        report.note(f"stopped after {MAX_ROUNDS} rounds of inference and folding; "
                    "more may fold: run fold-shapes again")
    fuse_matmul_add(graph, report)
    linear_rows(graph, report)  # the Reshape -> Gemm -> Reshape that fusing MatMul + Add made
    reshape_past_linear(graph, report)
    merge_duplicates(graph, report)
    _gathers_after_merging(graph, report)
    if report.rewritten:
        report.rewritten += dedupe_constants(graph)
        toposort(drop_dead(graph))
    return report


def _rewrite_static(graph: gs.Graph, report: TransformReport) -> None:
    """One pass of the shape-dependent rewrites, on freshly inferred shapes."""
    if needs_shapes(graph):
        infer_onto(graph)
        pin_reshape_targets(graph, report)
    _merge_and_bypass(graph, report)
    # After the bypass: a zero Pad can sit inside these Transpose patterns.
    reshapes_before_transposes(graph, report)
    transposes_as_reshapes(graph, report)
    flattens_as_reshapes(graph, report)
    linear_rows(graph, report)
    _merge_and_bypass(graph, report)
    drop_dead(graph)  # the bypassed nodes, so may_fold sees only live ones


def _gathers_after_merging(graph: gs.Graph, report: TransformReport) -> None:
    """Gathers of one Shape that CSE has just made one (each level read its own Shape):
    join them, drop a whole-tensor Gather, and merge what that made equal."""
    before = len(report.rewritten)
    concat_gathers(graph, report)
    if len(report.rewritten) != before:
        remove_no_ops(graph, report)
        merge_duplicates(graph, report)


def _merge_and_bypass(graph: gs.Graph, report: TransformReport) -> None:
    static_copied_dims(graph)
    merge_reshapes(graph, report)
    merge_transposes(graph, report)
    merge_slices(graph, report)
    unsqueezed_gathers(graph, report)
    concat_gathers(graph, report)
    squeezes_undone(graph, report)
    remove_no_ops(graph, report)


def _fold_counting(graph: gs.Graph, limit: int, report: TransformReport) -> None:
    labels = {id(n): label(n) for n in graph.nodes}
    fold_constants(graph, limit)
    report.rewritten += cleanup_counting(graph, labels)


def merge_reshapes(graph: gs.Graph, report: TransformReport) -> None:
    """Reshape(Reshape(x, a), b) -> Reshape(x, b) when the inner result has no other reader
    and `b` is a constant that copies no dim from it (no 0, or allowzero=1) but those `a`
    copied from x (a 0 in both at that position)."""
    for outer in nodes_of(graph, "Reshape"):
        if len(outer.inputs) < 2:
            continue  # bypassed as a no-op
        inner = producer(outer.inputs[0], op="Reshape")
        target = const_array(outer.inputs[1]) if len(outer.inputs) > 1 else None
        if inner is None or target is None or only_consumer(inner.outputs[0], graph) is None:
            continue
        if not outer.attrs.get("allowzero", 0) and not copies_through(target, inner):
            continue
        outer.inputs[0] = inner.inputs[0]
        detach(inner)
        report.rewrote(inner)


def merge_transposes(graph: gs.Graph, report: TransformReport) -> None:
    """Transpose(Transpose(x, p), q) -> Transpose(x, p[q]) when the inner result has no other
    reader (an identity result then goes as a no-op)."""
    for outer in nodes_of(graph, "Transpose"):
        inner = producer(outer.inputs[0], op="Transpose") if outer.inputs else None
        if inner is None or only_consumer(inner.outputs[0], graph) is None:
            continue
        p, q = inner.attrs.get("perm"), outer.attrs.get("perm")
        if p is None or q is None or len(p) != len(q):
            continue
        outer.attrs["perm"] = [int(p[axis]) for axis in q]
        outer.inputs[0] = inner.inputs[0]
        detach(inner)
        report.rewrote(inner)


# Ops whose folding or rewriting here depends on a shape or dtype that inference may supply.
_SHAPE_USERS = frozenset({"Shape", "Size", "Reshape", "Expand", "Cast", "MatMul", "Slice",
                          "Gather", "Squeeze"})
_UNIT_OPS = frozenset({"Add", "Sub", "Mul", "Div"})  # x+0, x*1, ... with a constant operand


def needs_shapes(graph: gs.Graph) -> bool:
    """Whether shape inference (an export plus onnx's pass) could change anything: a node
    above reads or writes a variable whose shape is not fully known. Conv/Relu ladders skip
    it."""
    return any((node.op in _SHAPE_USERS or (node.op in _UNIT_OPS and any(
        isinstance(t, gs.Constant) for t in node.inputs))) and any(
        isinstance(t, gs.Variable) and static_shape(t) is None
        for t in (*node.inputs, *node.outputs)) for node in graph.nodes)


def remove_no_ops(graph: gs.Graph, report: TransformReport) -> None:
    """Bypass every node NO_OPS says computes its input unchanged: readers get the input
    tensor itself (a weight stays one initializer); a graph output keeps its name."""
    for node in nodes_of(graph, *NO_OPS):
        if not node.inputs or not node.outputs:
            continue
        if (index := NO_OPS[node.op](node)) is None:
            continue
        if (reason := _bypass(graph, node, node.inputs[index])) is not None:
            report.skip(node, reason)
        else:
            report.rewrote(node)


def _bypass(graph: gs.Graph, node: gs.Node, source: gs.Tensor) -> str | None:
    out = node.outputs[0]
    if not is_graph_output(graph, out):
        detach(node)
        replace_uses(out, source)
        return None
    writer = producer(source)
    if writer is None or is_graph_output(graph, source) or any(t is source for t in graph.inputs):
        return "its output is a graph output fed by an input, constant or other output"
    # The producer writes the output tensor directly, so the graph output keeps its name.
    detach(node)
    replace_uses(source, out)
    index = next(i for i, t in enumerate(writer.outputs) if t is source)
    writer.outputs[index] = out
    return None


def fuse_matmul_add(graph: gs.Graph, report: TransformReport) -> None:
    """MatMul(A, W) + b -> Gemm(A, W, b) when A and W are 2-D, W and b are constants and b
    broadcasts along rows (shape [N] or [1, N]): one node, and the same math ORT would fuse."""
    fresh = None
    for matmul in nodes_of(graph, "MatMul"):
        add = only_consumer(matmul.outputs[0], graph)
        if add is None or add.op != "Add" or not _gemm_ready(matmul, add):
            continue
        bias = add.inputs[1] if add.inputs[0] is matmul.outputs[0] else add.inputs[0]
        fresh = fresh or name_maker(graph)
        gemm = gs.Node("Gemm", fresh(matmul.name or "Gemm"), {}, [*matmul.inputs, bias],
                       [gs.Variable(fresh(f"{matmul.outputs[0].name}_gemm"))])
        graph.nodes.append(gemm)
        adopt_outputs(gemm, add)
        detach(matmul)
        report.rewrote(add)


def _gemm_ready(matmul: gs.Node, add: gs.Node) -> bool:
    if len(matmul.inputs) != 2 or len(add.inputs) != 2:
        return False
    a, weight = static_shape(matmul.inputs[0]), const_array(matmul.inputs[1])
    rank = len(matmul.inputs[0].shape) if matmul.inputs[0].shape is not None else None
    bias_tensor = add.inputs[1] if add.inputs[0] is matmul.outputs[0] else add.inputs[0]
    bias = const_array(bias_tensor)
    if (a is None and rank != 2) or (a is not None and len(a) != 2):
        return False
    if weight is None or weight.ndim != 2 or not np.issubdtype(weight.dtype, np.floating):
        return False
    if bias is None or bias.dtype != weight.dtype:
        return False
    return bias.shape in ((weight.shape[1],), (1, weight.shape[1]))
