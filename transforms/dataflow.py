"""Dataflow queries that change nothing: which node (and which MegEngine module, from the
exporter's node metadata) produces each input of, say, every Concat."""

from __future__ import annotations

from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs

from . import transform
from .graphio import provenance, to_graph
from .patterns import consumers, nodes_of, producer
from .report import TransformReport


@dataclass(frozen=True)
class ProducerInfo:
    """Where one input of one node comes from."""

    consumer: str
    consumer_op: str
    input_index: int
    tensor: str
    producer: str | None      # None for graph inputs and initializers
    producer_op: str          # op type, or "graph input" / "initializer"
    module: str | None = None
    fused: str | None = None      # modules folded into the producer by fuse-conv-bn etc.
    qualname: str | None = None
    orig_name: str | None = None  # what older MegEngine called `_orig_name`: `conv_bn.1_out`
    expr: str | None = None
    quant: str | None = None  # a Q/DQ producer's scale and zero point

    def __str__(self) -> str:
        source = f"{self.producer} ({self.producer_op})" if self.producer else self.producer_op
        origin = ", ".join(f"{key}={value}" for key, value in (
            ("module", self.module), ("fused", self.fused), ("orig_name", self.orig_name),
            ("qualname", self.qualname), ("expr", self.expr), ("quant", self.quant)) if value)
        text = f"{self.consumer} input {self.input_index} {self.tensor!r} ← {source}"
        return f"{text} [{origin}]" if origin else text


def _graph(model_or_graph: onnx.ModelProto | gs.Graph) -> gs.Graph:
    if isinstance(model_or_graph, gs.Graph):
        return model_or_graph
    return to_graph(model_or_graph)


def _info(graph: gs.Graph, node: gs.Node, index: int, tensor: gs.Tensor) -> ProducerInfo:
    source = producer(tensor)
    if source is not None:
        kind = source.op
    else:
        kind = "initializer" if isinstance(tensor, gs.Constant) else "graph input"
    meta = provenance(graph, source)
    return ProducerInfo(node.name, node.op, index, tensor.name,
                        source.name if source is not None else None, kind,
                        meta.get("module"), meta.get("fused"), meta.get("qualname"),
                        meta.get("orig_name"), meta.get("expr"), _quant(source))


def _quant(node: gs.Node | None) -> str | None:
    """`scale=0.0213 zero_point=128 (uint8)` for a QuantizeLinear/DequantizeLinear producer."""
    if node is None or node.op not in ("QuantizeLinear", "DequantizeLinear"):
        return None
    values = [t.values if isinstance(t, gs.Constant) else None for t in node.inputs[1:3]]
    if values[0] is None:
        return None
    scale = " ".join(f"{v:.6g}" for v in values[0].reshape(-1)[:4])
    text = f"scale={scale}{' ...' if values[0].size > 4 else ''}"
    if len(values) > 1 and values[1] is not None:
        text += f" zero_point={values[1].reshape(-1)[0]} ({values[1].dtype})"
    return text


def producers(model_or_graph: onnx.ModelProto | gs.Graph, op_type: str = "Concat"
              ) -> list[ProducerInfo]:
    """For every `op_type` node, in graph order, where each of its inputs comes from."""
    graph = _graph(model_or_graph)
    return [_info(graph, node, index, tensor)
            for node in nodes_of(graph, op_type)
            for index, tensor in enumerate(node.inputs) if tensor.name]


def tensor_producer(model_or_graph: onnx.ModelProto | gs.Graph, tensor: str
                    ) -> list[ProducerInfo]:
    """Where `tensor` comes from, once per node input that reads it."""
    graph = _graph(model_or_graph)
    found = graph.tensors().get(tensor)
    if found is None:
        return []
    readers = [_info(graph, node, index, t) for node in consumers(found)
               for index, t in enumerate(node.inputs) if t is found]
    if readers:
        return readers
    # A graph output nobody reads: report where it is made all the same.
    return [_info(graph, gs.Node("", name="(graph output)"), 0, found)]


@transform("where")
def where(graph: gs.Graph, *, op_type: str = "Concat", tensor: str | None = None
          ) -> TransformReport:
    """Query (changes nothing): list the producer and MegEngine provenance of every input of
    each `op_type` node, or of the readers of `tensor`."""
    report = TransformReport("where", verb="found")
    infos = tensor_producer(graph, tensor) if tensor else producers(graph, op_type)
    for info in infos:
        report.note(str(info))
    if not infos:
        report.note(f"no tensor named {tensor!r}" if tensor else f"no {op_type} nodes")
    return report
