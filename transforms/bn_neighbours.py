"""Where a BatchNormalization y = x·s + t (per channel, axis 1) with no Conv/Gemm right before it
can still go: into a MatMul behind a channel-keeping flatten to 2-D (LeViT's `bn(x.flatten(0, 1))`
after a Linear), or into the unpadded Conv that reads it (VAN's BN → 1×1 conv)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from .affine import Linear, linear_of, overflow_reason, sole_output_reason
from .graphio import inherit_metadata
from .patterns import const_array, detach, only_consumer, producer

NOTHING_BEFORE = "no Conv/ConvTranspose/Gemm/MatMul before it"


def fold_through_flatten(graph: gs.Graph, bn: gs.Node, s: np.ndarray, t: np.ndarray,
                         fresh: Callable[[str], str], rank: Callable[[gs.Tensor], int | None]
                         ) -> str | None:
    """MatMul(A, W) [.., C] -> flatten to [M, C] -> BN  ==>  Reshape(A, [-1, K]) -> Gemm(W·s, t).
    Any reshape of [..., C] to [M, C] keeps rows in order (it flattens the leading dims), so
    the BN's channel axis 1 is the MatMul's last axis. None when folded, else the reason."""
    plan = _flatten_plan(graph, bn, rank)
    if isinstance(plan, str):
        return plan
    flat, lin = plan
    if reason := overflow_reason(lin, s, t):
        return reason
    matmul, dtype = lin.node, lin.weight.dtype
    k = lin.weight.shape[0]
    rows = gs.Variable(fresh(f"{matmul.outputs[0].name}.rows"), dtype=matmul.inputs[0].dtype)
    reshape = gs.Node("Reshape", fresh(f"{flat.name or 'Reshape'}.rows"),
                      inputs=[matmul.inputs[0], gs.Constant(fresh(f"{flat.name}.shape"),
                                                            np.array([-1, k], np.int64))],
                      outputs=[rows])
    weight = gs.Constant(fresh(f"{matmul.name}.weight"), (lin.weight * s[None, :]).astype(dtype))
    bias = gs.Constant(fresh(f"{matmul.name}.bias"), t.astype(dtype))
    outputs = list(bn.outputs[:1])
    for node in (bn, flat, matmul):
        detach(node)
    gemm = gs.Node("Gemm", fresh(f"{matmul.name or 'Gemm'}.gemm"), inputs=[rows, weight, bias],
                   outputs=outputs)
    for node, origin in ((reshape, flat), (gemm, matmul)):
        inherit_metadata(graph, node, origin)
        graph.nodes.append(node)
    return None


def _flatten_plan(graph: gs.Graph, bn: gs.Node, rank: Callable[[gs.Tensor], int | None]
                  ) -> tuple[gs.Node, Linear] | str:
    flat = producer(bn.inputs[0])
    if flat is None or flat.op not in ("Reshape", "Flatten"):
        return NOTHING_BEFORE
    matmul = producer(flat.inputs[0], op="MatMul")
    if matmul is None:
        return f"no MatMul before the {flat.op} before it"
    for node, reader in ((matmul, flat), (flat, bn)):
        if reason := sole_output_reason(graph, node, reader):
            return reason
    lin = linear_of(graph, matmul, rank)
    if isinstance(lin, str):
        return lin
    if lin.out_rank is None or lin.out_rank < 2:
        return "MatMul output rank unknown"
    if not _keeps_channels(flat, lin.out_rank, lin.channels):
        return f"{flat.op} does not flatten [..., {lin.channels}] to [M, {lin.channels}]"
    return flat, lin


def _keeps_channels(flat: gs.Node, in_rank: int, channels: int) -> bool:
    """The node turns [..., C] into [M, C]."""
    if flat.op == "Flatten":
        axis = int(flat.attrs.get("axis", 1))
        return (axis + in_rank if axis < 0 else axis) == in_rank - 1
    target = const_array(flat.inputs[1]) if len(flat.inputs) > 1 else None
    if target is not None and target.shape == (2,):
        # 0 copies an input dim (or, with allowzero, means size 0): not a plain row count.
        return int(target[1]) == channels and int(target[0]) != 0
    shape = flat.outputs[0].shape
    return shape is not None and len(shape) == 2 and shape[1] == channels


def fold_into_next_conv(graph: gs.Graph, bn: gs.Node, s: np.ndarray, t: np.ndarray,
                        fresh: Callable[[str], str]) -> str | None:
    """BN -> Conv(W, b) ==> Conv(W·s over input channels, b + Σ W·t), exact only without
    padding (a padded border would read 0 where the BN gives t). None when folded."""
    conv = only_consumer(bn.outputs[0], graph)
    if conv is None or conv.op != "Conv" or conv.inputs[0] is not bn.outputs[0] or any(
            tensor is bn.outputs[0] for tensor in conv.inputs[1:]):
        return "its output is not read by one Conv only"
    if _padded(conv) and np.any(t != 0):
        return "the Conv after it pads (the border would see 0, not the BN's shift)"
    lin = linear_of(graph, conv)
    if isinstance(lin, str):
        return lin
    group = int(conv.attrs.get("group", 1))
    weight = lin.weight
    cout, cin_g = weight.shape[:2]
    if cin_g * group != s.size or cout % group:
        return f"Conv reads {cin_g * group} channels, the BN has {s.size}"
    folded = _next_conv_params(weight, lin.bias, s, t, group)
    if folded is None:
        return f"folding would overflow {weight.dtype}"
    new_weight, new_bias = folded
    conv.inputs[0] = bn.inputs[0]
    conv.inputs[1] = gs.Constant(fresh(f"{conv.name}.weight"), new_weight)
    if len(conv.inputs) > 2:
        conv.inputs[2] = gs.Constant(fresh(f"{conv.name}.bias"), new_bias)
    else:
        conv.inputs.append(gs.Constant(fresh(f"{conv.name}.bias"), new_bias))
    detach(bn)
    return None


def _padded(conv: gs.Node) -> bool:
    auto_pad = conv.attrs.get("auto_pad", "NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    return auto_pad not in ("NOTSET", "VALID") or any(int(p) for p in conv.attrs.get("pads", []))


def _next_conv_params(weight: np.ndarray, bias: np.ndarray | None, s: np.ndarray, t: np.ndarray,
                      group: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(W', b') for Conv(x·s + t) = Conv'(x), in float64 then cast; None if not finite."""
    cout, cin_g = weight.shape[:2]
    grouped = weight.astype(np.float64).reshape(group, cout // group, cin_g, -1)
    s64 = s.astype(np.float64).reshape(group, 1, cin_g, 1)
    t64 = t.astype(np.float64).reshape(group, 1, cin_g, 1)
    new_weight = (grouped * s64).reshape(weight.shape)
    shift = (grouped * t64).sum(axis=(2, 3)).reshape(cout)
    new_bias = shift + (bias.astype(np.float64) if bias is not None else 0.0)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = new_weight.astype(weight.dtype), new_bias.astype(weight.dtype)
    if not all(np.all(np.isfinite(a)) for a in cast):
        return None
    return cast
