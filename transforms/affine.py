"""Fold a per-output-channel affine `y * s + t` into the node computing `y = x·W + b`
(Conv, ConvTranspose, Gemm, MatMul with constant W): W' = W·diag(s), b' = b·s + t.
Shared by fuse-conv-bn (s, t from BatchNormalization) and absorb-const (Mul/Div/Add/Sub)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from .patterns import const_array, is_graph_output, only_consumer, set_const_input

LINEAR_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class Linear:
    """A node computing x·W + b whose parameters may be rewritten in place."""

    node: gs.Node
    weight: np.ndarray
    bias: np.ndarray | None
    channels: int
    out_rank: int | None  # None when the output rank is unknown (MatMul without shapes)
    channel_axis: int     # 1 for convolutions, -1 for Gemm/MatMul


def _param_reason(graph: gs.Graph, tensor: gs.Tensor, what: str) -> str | None:
    if const_array(tensor) is None:
        where = "a graph input" if any(t is tensor for t in graph.inputs) else "not constant"
        return f"{what} {tensor.name} is {where}"
    if len(tensor.outputs) > 1:
        return f"{what} {tensor.name} is shared with another node"
    return None


def linear_of(graph: gs.Graph, node: gs.Node,
              rank: Callable[[gs.Tensor], int | None] | None = None) -> Linear | str:
    """`node` as a Linear, or the reason its parameters cannot be rewritten; `rank` (see
    graphio.rank_finder) tells a MatMul's output rank when gs has no shape for it."""
    if node.op not in LINEAR_OPS:
        return f"{node.op} is not Conv/ConvTranspose/Gemm/MatMul"
    has_bias = node.op != "MatMul" and len(node.inputs) > 2 and node.inputs[2].name != ""
    params = [(node.inputs[1], "weight")] + ([(node.inputs[2], "bias")] if has_bias else [])
    for tensor, what in params:
        if reason := _param_reason(graph, tensor, what):
            return reason
    weight = const_array(node.inputs[1])
    bias = const_array(node.inputs[2]) if has_bias else None
    if not np.issubdtype(weight.dtype, np.floating):
        return f"weight {node.inputs[1].name} is {weight.dtype}, not floating point"
    if node.op in ("Conv", "ConvTranspose"):
        channels = weight.shape[0] if node.op == "Conv" else (
            weight.shape[1] * int(node.attrs.get("group", 1)))
        return Linear(node, weight, bias, channels, weight.ndim, 1)
    if node.op == "Gemm":
        channels = weight.shape[0] if node.attrs.get("transB", 0) else weight.shape[1]
        return Linear(node, weight, bias, channels, 2, -1)
    if weight.ndim != 2:
        return f"MatMul weight {node.inputs[1].name} is {weight.ndim}-D, not 2-D"
    out_rank = rank(node.outputs[0]) if rank else None
    if out_rank is None and node.outputs[0].shape is not None:
        out_rank = len(node.outputs[0].shape)
    return Linear(node, weight, None, weight.shape[1], out_rank, -1)


def sole_output_reason(graph: gs.Graph, node: gs.Node, reader: gs.Node) -> str | None:
    """Why `node`'s output cannot be rewritten for `reader` alone (None when it can)."""
    if len(node.outputs) != 1:
        return f"{node.name} has {len(node.outputs)} outputs"
    out = node.outputs[0]
    if is_graph_output(graph, out):
        return f"{out.name} is a graph output"
    if only_consumer(out) is not reader:
        return f"{out.name} has other consumers"
    return None


def overflow_reason(lin: Linear, s: np.ndarray, t: np.ndarray) -> str | None:
    """Why folding (s, t) into lin would produce inf/nan parameters (None when it would not):
    checked on the bounds |W|·max|s| and |b|·max|s| + max|t| in the weight's dtype."""
    dtype = lin.weight.dtype
    with np.errstate(over="ignore", invalid="ignore"):
        scale, shift = np.abs(s).max(initial=0), np.abs(t).max(initial=0)
        bias = np.abs(lin.bias).max(initial=0) if lin.bias is not None else 0
        bounds = np.array([np.abs(lin.weight).max(initial=0) * scale, bias * scale + shift])
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(t))
            and np.all(np.isfinite(bounds.astype(dtype)))):
        return f"folding would overflow {dtype} (scale up to {scale:.3g}, shift {shift:.3g})"
    return None


def scale_weight(op: str, weight: np.ndarray, s: np.ndarray, *, group: int = 1,
                 trans_b: bool = False) -> np.ndarray:
    """W with output channel c multiplied by s[c], for each op's weight layout."""
    k = (1,) * (weight.ndim - 2)
    if op == "Conv":                      # (Cout, Cin/g, k...)
        return weight * s.reshape(-1, 1, *k)
    if op == "ConvTranspose":             # (Cin, Cout/g, k...): Cout is split across groups
        cin, cout_g = weight.shape[:2]
        grouped = weight.reshape(group, cin // group, cout_g, *weight.shape[2:])
        return (grouped * s.reshape(group, 1, cout_g, *k)).reshape(weight.shape)
    if op == "Gemm" and trans_b:          # (C, K)
        return weight * s[:, None]
    return weight * s[None, :]            # Gemm (K, C) and MatMul (K, C)


def fold_affine(lin: Linear, s: np.ndarray, t: np.ndarray, fresh: Callable[[str], str],
                graph: gs.Graph | None = None) -> None:
    """Rewrite lin.node so it computes (x·W + b)·s + t; s, t are (C,) vectors. With the graph,
    weights only this node reads change in place (their names stay)."""
    node, dtype = lin.node, lin.weight.dtype
    weight = scale_weight(node.op, lin.weight, s, group=int(node.attrs.get("group", 1)),
                          trans_b=bool(node.attrs.get("transB", 0)))
    set_const_input(node, 1, weight.astype(dtype), fresh(f"{node.name}.weight"), graph)
    if node.op == "Gemm":
        _fold_gemm_bias(lin, s, t, fresh, graph)
        return
    if node.op == "MatMul":
        if np.any(t != 0):
            # MatMul has no bias input; with a 2-D output, Gemm(A, W, t) is the same product.
            node.op, node.attrs = "Gemm", {}
            set_const_input(node, 2, t.astype(dtype), fresh(f"{node.name}.bias"))
        return
    bias = lin.bias if lin.bias is not None else np.zeros(lin.channels, dtype)
    set_const_input(node, 2, (bias * s + t).astype(dtype), fresh(f"{node.name}.bias"), graph)


def _fold_gemm_bias(lin: Linear, s: np.ndarray, t: np.ndarray, fresh: Callable[[str], str],
                    graph: gs.Graph | None) -> None:
    node, dtype = lin.node, lin.weight.dtype
    beta = float(node.attrs.get("beta", 1.0))
    # Gemm adds beta*C; fold beta in so the new C stands alone (beta = 1).
    bias = beta * lin.bias if lin.bias is not None else np.zeros(lin.channels, dtype)
    node.attrs["beta"] = 1.0
    set_const_input(node, 2, (bias * s + t).astype(dtype), fresh(f"{node.name}.bias"), graph)
