"""dataflow: `producers` and the `where` query name each Concat input's producer and the
MegEngine module the exporter recorded for it, and change nothing."""

from __future__ import annotations

import onnx

from tests.helpers import parse_model
from tm2onnx.transforms import run_pipeline
from tm2onnx.transforms.dataflow import ProducerInfo, producers, tensor_producer

GUIDE_CONCAT = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,2,4,4] x) => (float[1,4,4,4] y)
  <float[2,2,1,1] w = {1, 0, 0, 1}, float[2] s = {1, 1}, float[2] b = {0, 0},
   float[2] m = {0, 0}, float[2] v = {1, 1}> {
    [bn] p = BatchNormalization (x, s, b, m, v)
    [conv_bn_1] q = Conv (x, w)
    [cat] y = Concat <axis=1> (p, q)
}"""


def guide_model() -> onnx.ModelProto:
    model = parse_model(GUIDE_CONCAT)
    model.graph.node[1].name = "conv_bn.1"  # the parser takes no dots in node names
    provenance = {"bn": ("bn", "Net.bn", "%3 = bn(x)"),
                  "conv_bn.1": ("conv_bn.1", "Net.conv_bn.1", "%4 = conv_bn.1(x)")}
    for node in model.graph.node:
        for key, value in zip(("module", "qualname", "expr"), provenance.get(node.name, ())):
            node.metadata_props.add(key=key, value=value)
    return model


def test_concat_inputs_name_their_megengine_modules():
    infos = producers(guide_model(), op_type="Concat")
    assert [(i.input_index, i.tensor, i.producer, i.producer_op, i.module) for i in infos] == [
        (0, "p", "bn", "BatchNormalization", "bn"), (1, "q", "conv_bn.1", "Conv", "conv_bn.1")]
    assert str(infos[1]) == ("cat input 1 'q' ← conv_bn.1 (Conv) "
                             "[module=conv_bn.1, qualname=Net.conv_bn.1, expr=%4 = conv_bn.1(x)]")


def test_where_query_reports_and_changes_nothing():
    model = guide_model()
    before = model.SerializeToString()
    out, [report] = run_pipeline(model, ["where"])
    assert out.SerializeToString() == before and not report.changed
    assert "module=bn" in str(report) and "module=conv_bn.1" in str(report)


def test_where_a_tensor_comes_from():
    model = guide_model()
    [info] = tensor_producer(model, "x")[:1]
    assert info == ProducerInfo("bn", "BatchNormalization", 0, "x", None, "graph input")
    [out] = tensor_producer(model, "y")
    assert (out.producer, out.consumer) == ("cat", "(graph output)")
    _, [report] = run_pipeline(model, ["where"], options={"where": {"tensor": "nope"}})
    assert report.notes == ["no tensor named 'nope'"]
