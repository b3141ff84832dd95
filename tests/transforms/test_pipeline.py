"""run_pipeline and the registry: names resolve (with `deploy`), options bind, failures name
the step and the steps before it, and model/node metadata survive the gs round trip."""

from __future__ import annotations

import re

import onnx
import onnx_graphsurgeon as gs
import pytest

from tests.helpers import FP32, assert_same_function, ops, parse_model
from tm2onnx.errors import TransformError
from tm2onnx.transforms import (
    DEPLOY_PIPELINE,
    TRANSFORMS,
    describe,
    expand,
    run_pipeline,
    transform,
)
from tm2onnx.transforms.report import TransformReport

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[1,2,3,3] x) => (float[1,2,3,3] y)
  <float[2,2,1,1] w = {1, 2, 3, 4}, float[2] s = {1, 2}, float[2] b = {0.5, 0},
   float[2] m = {0, 1}, float[2] v = {1, 4}, float k = {8.0}> {
    [conv] t = Conv (x, w)
    [bn] u = BatchNormalization <epsilon=0.25> (t, s, b, m, v)
    [relu] r = Relu (u)
    [bn2] z = BatchNormalization (r, s, b, m, v)
    [scale] y = Mul (z, k)
}"""


def model_with_metadata() -> onnx.ModelProto:
    model = parse_model(MODEL)
    model.producer_name = "tm2onnx"
    model.metadata_props.add(key="source", value="net.tm")
    for node in model.graph.node:
        node.metadata_props.add(key="module", value=f"net.{node.name}")
    return model


@pytest.fixture
def failing_transform():
    @transform("explode")
    def explode(graph: gs.Graph) -> TransformReport:
        """Always fails (test only)."""
        raise ValueError("boom")
    yield "explode"
    del TRANSFORMS["explode"]


def test_failure_names_the_step_and_those_before_it(failing_transform):
    message = f"explode failed after [{', '.join(DEPLOY_PIPELINE)}]: boom"
    with pytest.raises(TransformError, match=re.escape(message)):
        run_pipeline(parse_model(MODEL), ["deploy", "explode", "rename"])


def test_registry_is_strict():
    with pytest.raises(TransformError, match="already registered"):
        transform("cleanup")(lambda graph: TransformReport("x"))
    with pytest.raises(TransformError, match="unknown transform.*fuse-cnv-bn.*known: deploy"):
        expand(["fuse-cnv-bn"])
    with pytest.raises(TransformError, match="cleanup has no option.*it takes: fold"):
        run_pipeline(parse_model(MODEL), ["cleanup"], options={"cleanup": {"folding": 1}})
    assert expand(["rename", "deploy"]) == ["rename", *DEPLOY_PIPELINE]
    described = dict(describe())
    assert {"rename", "cleanup", "fuse-conv-bn", "absorb-const", "where"} <= set(described)
    assert all(line and "\n" not in line for line in described.values())


def test_deploy_keeps_metadata_and_model_fields():
    model = model_with_metadata()
    out, reports = run_pipeline(model, ["deploy"], check=True)
    # absorb-const folds only into Conv/Gemm/MatMul, so `*8` after the kept bn2 stays.
    assert ops(out) == ["Conv", "Relu", "BatchNormalization", "Mul"], [str(r) for r in reports]
    meta = {n.name: {p.key: p.value for p in n.metadata_props} for n in out.graph.node}
    # conv now computes bn's output: it answers for it, and remembers what was folded in.
    assert meta["conv"] == {"module": "net.bn", "fused": "net.conv"}
    # bn2 has nothing to fold into: it stays, with its own provenance.
    assert [m["module"] for m in meta.values()] == ["net.bn", "net.relu", "net.bn2",
                                                    "net.scale"]
    assert (out.ir_version, out.producer_name) == (10, "tm2onnx")
    assert [(p.key, p.value) for p in out.metadata_props] == [("source", "net.tm")]
    assert [(o.domain, o.version) for o in out.opset_import] == [("", 17)]
    assert_same_function(model, out, **FP32)


def test_on_step_sees_each_models_before_and_after():
    model = parse_model(MODEL)
    seen = []

    def on_step(name, before, after, report):
        seen.append((name, ops(before), ops(after), report.name))

    out, _ = run_pipeline(model, ["fuse-conv-bn", "where"], on_step=on_step)
    assert seen[0] == ("fuse-conv-bn", ops(model), ["Conv", "Relu", "BatchNormalization", "Mul"],
                       "fuse-conv-bn")
    assert seen[1][1] == seen[1][2] == ops(out)


def test_report_line_reads_like_the_guide():
    report = TransformReport("fuse-conv-bn", verb="folded", rewritten=["a"] * 12,
                             skipped=[("conv3", "weight is a graph input")],
                             nodes_before=120, nodes_after=108, seconds=0.02)
    assert str(report) == ("fuse-conv-bn: folded 12, skipped 1 (conv3: weight is a graph "
                           "input)  nodes 120→108  0.02s")


def test_deploy_folds_before_the_fusions_that_need_constants():
    """Exporters write a weight shared by value as Identity(weight) (torch deduplicates equal
    initializers: frozen BNs of DETR's backbone); once fold-shapes has made them constants,
    the Conv fusions take them (they ran first once and skipped every one)."""
    model = parse_model("""<ir_version: 10, opset_import: ["" : 17]>
    g (float[1,2,4,4] x) => (float[1,2,4,4] y)
      <float[2,2,1,1] w = {1, -2, 3, 4}, float[2,2,1,1] w2 = {2, 1, -1, 3}, float[1,2,1,1] s = {0.5, 2},
       float[1,2,1,1] b = {0.25, -1}, float[2] g = {1, 2}, float[2] beta = {0, 1},
       float[2] m = {0.5, 0}, float[2] v = {1, 4}> {
        si = Identity (s)
        bi = Identity (b)
        gi = Identity (g)
        c = Conv (x, w)
        scaled = Mul (c, si)
        shifted = Add (scaled, bi)
        r = Relu (shifted)
        c2 = Conv (r, w2)
        n = BatchNormalization (c2, gi, beta, m, v)
        y = Relu (n)
    }""")
    out, reports = run_pipeline(model, ["deploy"])
    assert ops(out) == ["Conv", "Relu", "Conv", "Relu"], [str(r) for r in reports]
    assert_same_function(model, out, **FP32)
