"""Transforms on real exported models: the deploy pipeline (and fp16-linear on the guide's
Linear net) leaves the structure it promises and computes what the untransformed export does
(onnxruntime with graph optimizations off), and what MegEngine does."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import FP16, assert_matches, assert_same_function, ops, run_ort

SMALL = [(1, 3, 64, 64)]
# Folding BN into conv weights reorders fp32 rounding once per layer; deep nets accumulate it
# (see tests/test_models.py for the same bound against MegEngine).
DEEP = {"rtol": 1e-4, "atol": 1e-4}

DEPLOY_CASES = [
    pytest.param("conv_bn_relu", None, id="conv_bn_relu"),
    pytest.param("conv_bn_concat", None, id="conv_bn_concat"),
    pytest.param("const_scale", None, id="const_scale"),
    pytest.param("transformer_block", None, id="transformer_block"),
    pytest.param("resnet18", SMALL, id="resnet18-64px"),
    pytest.param("resnet50", SMALL, id="resnet50-64px"),
    pytest.param("mobilenet_v2", SMALL, id="mobilenet_v2-64px"),
    pytest.param("shufflenet_v2", SMALL, id="shufflenet_v2-64px"),
]


def _export(name: str, shapes):
    import tm2onnx
    from models.make_models import build

    traced, inputs = build(name, shapes=shapes)
    return traced, inputs, tm2onnx.export(traced)


@pytest.mark.parametrize("name, shapes", DEPLOY_CASES)
def test_deploy_pipeline_on_model(megengine, name, shapes):
    from tm2onnx.transforms import DEPLOY_PIPELINE, run_pipeline

    traced, inputs, raw = _export(name, shapes)
    lean, reports = run_pipeline(raw, ["deploy"])

    assert "BatchNormalization" not in ops(lean)
    if name == "const_scale":  # the guide's conv * 8 / 128
        assert ops(lean) == ["Conv"]
    assert len(lean.graph.node) <= len(raw.graph.node)
    assert [r.name for r in reports] == list(DEPLOY_PIPELINE)
    assert [o.name for o in lean.graph.output] == [o.name for o in raw.graph.output]
    assert_same_function(raw, lean, **DEEP)
    feeds = dict(zip([i.name for i in lean.graph.input], inputs))
    expected = [np.asarray(t.numpy()) for t in _as_tuple(traced(*map(megengine.Tensor, inputs)))]
    assert_matches(dict(zip([o.name for o in lean.graph.output], expected)),
                   run_ort(lean, feeds), **DEEP)


def test_fp16_linear_on_the_guide_linear_net(megengine):
    from onnx import TensorProto

    from tm2onnx.transforms import run_pipeline

    _, _, raw = _export("big_linear", None)  # Linear(3,256) -> Linear(256,512)
    half, (report,) = run_pipeline(raw, ["fp16-linear"], options={
        "fp16-linear": {"min_params": 100 * 1024}})
    halves = sorted(i.name for i in half.graph.initializer if i.data_type == TensorProto.FLOAT16)
    assert halves == ["linear_1.bias", "linear_1.weight"]
    assert ops(half).count("Cast") == 2 and len(report.rewritten) == 1
    for value in (*half.graph.input, *half.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
    assert_same_function(raw, half, **FP16)


def _as_tuple(value):
    return value if isinstance(value, (tuple, list)) else (value,)


def test_where_answers_the_guides_question_after_deploy(megengine):
    from tm2onnx.transforms import producers, run_pipeline

    _, _, raw = _export("conv_bn_concat", None)
    before = [(p.module, p.orig_name) for p in producers(raw, op_type="Concat")]
    lean, _ = run_pipeline(raw, ["deploy"])
    after = [(p.producer_op, p.module, p.fused, p.orig_name)
             for p in producers(lean, op_type="Concat")]
    assert before == [("bn", "bn_out"), ("conv_bn.1", "conv_bn.1_out")]  # the guide's answer
    assert after == [("Conv", "bn", "conv", "bn_out"),
                     ("Conv", "conv_bn.1", "conv_bn.0", "conv_bn.1_out")]
