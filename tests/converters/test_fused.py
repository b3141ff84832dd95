"""Fused module converters against MegEngine, with randomized BN running stats, affine and
conv/linear biases (all zero or one by default, which would hide a dropped or misfolded term)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.converters.harness import export_and_compare, randomized


def _randomize_all(module: Any) -> Any:
    """Randomize the module and every child that has weights or running stats."""
    for seed, (_, child) in enumerate(module.named_modules()):
        randomized(child, seed=seed + 11)
    return module


BN = ["BatchNormalization"]
CASES = [
    pytest.param(lambda M: M.ConvBn2d(3, 4, 3, padding=1, eps=0.1), (2, 3, 6, 6),
                 ["Conv", *BN], id="conv-bn"),
    pytest.param(lambda M: M.ConvBn2d(4, 6, 3, stride=2, groups=2, bias=False, affine=False),
                 (1, 4, 7, 7), ["Conv", *BN], id="conv-bn-g2-nobias-noaffine"),
    pytest.param(lambda M: M.ConvBnRelu2d(3, 4, 3, padding=1, eps=0.1), (2, 3, 5, 5),
                 ["Conv", *BN, "Relu"], id="conv-bn-relu"),
    pytest.param(lambda M: M.ConvBnRelu2d(4, 4, 3, groups=4, dilation=2, eps=0.1,
                                          track_running_stats=False), (3, 4, 8, 8),
                 ["Conv", "ReduceMean", "Relu"], id="conv-bn-relu-depthwise-batch-stats"),
    pytest.param(lambda M: M.ConvRelu2d(3, 5, 3, padding=1), (1, 3, 6, 6), ["Conv", "Relu"],
                 id="conv-relu"),
    pytest.param(lambda M: M.ConvRelu2d(3, 5, 3, padding=(1, 2), padding_mode="reflect"),
                 (1, 3, 6, 7), ["Pad", "Conv", "Relu"], id="conv-relu-reflect"),
    pytest.param(lambda M: M.ConvRelu2d(3, 5, 3, padding=1, padding_mode="replicate"),
                 (1, 3, 6, 6), ["Pad", "Conv", "Relu"], id="conv-relu-replicate"),
    pytest.param(lambda M: M.ConvTransposeRelu2d(3, 4, 3, stride=2, padding=1), (1, 3, 5, 5),
                 ["ConvTranspose", "Relu"], id="deconv-relu"),
    pytest.param(lambda M: M.ConvTransposeBn2d(4, 6, 2, stride=2, groups=2, eps=0.1),
                 (1, 4, 4, 4), ["ConvTranspose", *BN], id="deconv-bn-g2"),
    pytest.param(lambda M: M.ConvTransposeBnRelu2d(3, 4, 3, eps=0.1), (2, 3, 4, 4),
                 ["ConvTranspose", *BN, "Relu"], id="deconv-bn-relu"),
    pytest.param(lambda M: M.LinearRelu(6, 4), (3, 6), ["Gemm", "Relu"], id="linear-relu"),
    pytest.param(lambda M: M.LinearRelu(6, 4, bias=False), (2, 3, 6), ["MatMul", "Relu"],
                 id="linear-relu-3d-nobias"),
    pytest.param(lambda M: M.LinearBn1d(6, 4, eps=0.1), (5, 6), ["Gemm", *BN],
                 id="linear-bn"),
    pytest.param(lambda M: M.LinearBn1d(6, 4, eps=0.1), (2, 4, 6), ["MatMul", *BN],
                 id="linear-bn-3d"),
    pytest.param(lambda M: M.LinearBnRelu1d(6, 4, eps=0.1, affine=False), (5, 6),
                 ["Gemm", *BN, "Relu"], id="linear-bn-relu-noaffine"),
]


@pytest.mark.parametrize("factory, shape, ops", CASES)
def test_fused_module(megengine, factory, shape, ops):
    import megengine.module as M

    model = export_and_compare(lambda: _randomize_all(factory(M)), [shape], expect_ops=ops)
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            epsilon = {a.name: a.f for a in node.attribute}.get("epsilon", 1e-5)
            assert epsilon == pytest.approx(factory(M).bn.eps)


def test_fused_conv_transpose_with_output_padding(megengine):
    import megengine.module as M

    model = export_and_compare(
        lambda: _randomize_all(M.ConvTransposeBnRelu2d(2, 2, 3, stride=2, output_padding=1)),
        [(1, 2, 4, 4)], expect_ops=["ConvTranspose", "BatchNormalization", "Relu"])
    deconv = next(n for n in model.graph.node if n.op_type == "ConvTranspose")
    assert {a.name: list(a.ints) for a in deconv.attribute}["output_padding"] == [1, 1]


OPTION_CASES = [
    pytest.param(lambda M: M.ConvBnRelu2d(3, 4, 3, eps=0.1), {"opset": 13}, id="opset13"),
    pytest.param(lambda M: M.ConvBnRelu2d(3, 4, 3, eps=0.1), {"dynamic_batch": True},
                 id="dynamic-batch"),
    pytest.param(lambda M: M.LinearBnRelu1d(5, 3, eps=0.1), {"dynamic_batch": True},
                 id="linear-dynamic-batch"),
    pytest.param(lambda M: M.ConvBn2d(3, 4, 3, eps=0.1), {"float16": True},
                 id="float16-input"),
]


@pytest.mark.parametrize("factory, options", OPTION_CASES)
def test_fused_export_options(megengine, factory, options):
    import megengine.module as M
    import numpy as np

    options = dict(options)
    shape = (2, 3, 6, 6) if "Conv" in factory(M).__class__.__name__ else (2, 5)
    array = np.random.default_rng(9).uniform(-2, 2, shape).astype("float32")
    if options.pop("float16", False):  # float16 input, float32 weights: computed in float32
        array = array.astype(np.float16)
    export_and_compare(lambda: _randomize_all(factory(M)), [array], **options)
