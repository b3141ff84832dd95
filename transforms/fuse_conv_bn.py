"""Fold inference BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul before it, using
BN(y) = y·s + t with s = scale / sqrt(var + epsilon), t = B - mean·s."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from . import transform
from .affine import LINEAR_OPS, Linear, fold_affine, linear_of, sole_output_reason
from .bn_neighbours import fold_into_next_conv, fold_through_flatten
from .graphio import inherit_metadata, merge_metadata, rank_finder
from .graphops import tidy
from .patterns import adopt_outputs, const_array, detach, name_maker, nodes_of, producer
from .report import TransformReport


def bn_affine(scale: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
              epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) with BN(y) = y·s + t per channel, computed in float64 then cast back."""
    s = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + epsilon)
    t = bias.astype(np.float64) - mean.astype(np.float64) * s
    return s.astype(scale.dtype), t.astype(scale.dtype)


@transform("fuse-conv-bn")
def fuse_conv_bn(graph: gs.Graph, *, decompose_standalone: bool = False) -> TransformReport:
    """Fold BatchNormalization into a preceding Conv/ConvTranspose/Gemm/2-D MatMul, a MatMul
    behind a channel-keeping flatten to 2-D (becoming Reshape+Gemm), or a following unpadded
    Conv; a BN with none of these stays one node (Mul+Add with decompose_standalone); refuses
    non-constant params, a shared weight, a producer output with other readers or a graph
    output."""
    report = TransformReport("fuse-conv-bn", verb="folded")
    fresh, rank = name_maker(graph), rank_finder(graph)
    for bn in nodes_of(graph, "BatchNormalization"):
        affine = _bn_params(bn)
        if isinstance(affine, str):
            report.skip(bn, affine)
            continue
        source = producer(bn.inputs[0])
        if source is not None and source.op in LINEAR_OPS:
            lin = _foldable(graph, source, bn, rank)
            if isinstance(lin, str):
                report.skip(bn, lin)
                continue
            fold_affine(lin, *affine, fresh, graph)
            merge_metadata(graph, source, bn)
            adopt_outputs(source, bn)
            report.rewrote(bn)
        elif (why := _other_fold(graph, bn, affine, fresh, rank)) is None:
            report.rewrote(bn)
        elif decompose_standalone:
            if reason := _decompose(graph, bn, *affine, fresh, rank(bn.inputs[0])):
                report.skip(bn, reason)
            else:
                report.rewrote(bn)
        else:
            report.skip(bn, f"kept as one node ({why})")
    if report.rewritten:
        tidy(graph)
    return report


def _other_fold(graph: gs.Graph, bn: gs.Node, affine: tuple[np.ndarray, np.ndarray],
                fresh: Callable[[str], str], rank: Callable[[gs.Tensor], int | None]
                ) -> str | None:
    """Fold `bn` through a flatten into the MatMul before it, else into the Conv after it;
    None when one of them did, else both reasons."""
    before = fold_through_flatten(graph, bn, *affine, fresh, rank)
    if before is None:
        return None
    after = fold_into_next_conv(graph, bn, *affine, fresh)
    return None if after is None else f"{before}; {after}"


def _bn_params(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | str:
    if bn.attrs.get("training_mode", 0):
        return "training_mode=1"
    if any(out.outputs for out in bn.outputs[1:]):
        return "running mean/var outputs are used"
    arrays = [const_array(t) for t in bn.inputs[1:5]]
    missing = [t.name for t, a in zip(bn.inputs[1:5], arrays) if a is None]
    if missing:
        return f"{', '.join(missing)} not constant"
    return bn_affine(*arrays, float(bn.attrs.get("epsilon", 1e-5)))


def _foldable(graph: gs.Graph, source: gs.Node, bn: gs.Node,
              rank: Callable[[gs.Tensor], int | None]) -> Linear | str:
    if reason := sole_output_reason(graph, source, bn):
        return reason
    lin = linear_of(graph, source, rank)
    if isinstance(lin, str):
        return lin
    # BN normalizes axis 1; for Gemm/MatMul that is the channel (last) axis only when 2-D.
    if lin.channel_axis == -1 and lin.out_rank != 2:
        return f"{source.op} output is not known to be 2-D"
    return lin


def _decompose(graph: gs.Graph, bn: gs.Node, s: np.ndarray, t: np.ndarray,
               fresh: Callable[[str], str], rank: int | None) -> str | None:
    """Replace a BN that has no foldable producer by x·s + t broadcast on axis 1."""
    x = bn.inputs[0]
    if rank is None:
        return "input rank unknown, cannot broadcast scale on axis 1"
    shape = (-1,) + (1,) * (rank - 2)
    scaled = gs.Variable(fresh(f"{bn.name}.scaled"), dtype=x.dtype, shape=x.shape)
    mul = gs.Node("Mul", fresh(f"{bn.name}.mul"),
                  inputs=[x, gs.Constant(fresh(f"{bn.name}.s"), s.reshape(shape))],
                  outputs=[scaled])
    outputs = [bn.outputs[0]]
    detach(bn)
    add = gs.Node("Add", fresh(f"{bn.name}.add"),
                  inputs=[scaled, gs.Constant(fresh(f"{bn.name}.t"), t.reshape(shape))],
                  outputs=outputs)
    for node in (mul, add):
        inherit_metadata(graph, node, bn)
        graph.nodes.append(node)
    return None
