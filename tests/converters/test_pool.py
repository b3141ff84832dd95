"""Pooling converters against MegEngine: both average modes with padding (where they differ),
stride/kernel/padding variants, and adaptive pooling on divisible and non-divisible sizes."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.harness import export_and_compare, functional_net

POOL_CASES = [
    pytest.param(lambda M: M.MaxPool2d(3, 2, 1), (1, 3, 9, 9), "MaxPool", id="max-k3s2p1"),
    pytest.param(lambda M: M.MaxPool2d(2), (2, 2, 8, 7), "MaxPool", id="max-k2-default-stride"),
    pytest.param(lambda M: M.MaxPool2d((2, 3), (1, 2), (1, 0)), (1, 2, 6, 9), "MaxPool",
                 id="max-rect"),
    pytest.param(lambda M: M.AvgPool2d(3, 2, 1), (1, 3, 9, 9), "AveragePool",
                 id="avg-default-excludes-padding"),
    pytest.param(lambda M: M.AvgPool2d(3, 2, 1, mode="average"), (1, 3, 9, 9), "AveragePool",
                 id="avg-average-counts-padding"),
    pytest.param(lambda M: M.AvgPool2d((3, 2), (2, 1), (1, 1), mode="AVERAGE"), (1, 2, 7, 6),
                 "AveragePool", id="avg-rect-uppercase-mode"),
    pytest.param(lambda M: M.AvgPool2d(2), (2, 3, 6, 6), "AveragePool", id="avg-k2"),
    pytest.param(lambda M: M.AdaptiveAvgPool2d(1), (2, 3, 7, 5), "GlobalAveragePool",
                 id="adaptive-avg-1"),
    pytest.param(lambda M: M.AdaptiveMaxPool2d((1, 1)), (2, 3, 7, 5), "GlobalMaxPool",
                 id="adaptive-max-1x1"),
    pytest.param(lambda M: M.AdaptiveAvgPool2d((2, 4)), (1, 3, 8, 8), "AveragePool",
                 id="adaptive-avg-divisible"),
    pytest.param(lambda M: M.AdaptiveAvgPool2d((3, 4)), (1, 2, 7, 10), "AveragePool",
                 id="adaptive-avg-non-divisible"),
    pytest.param(lambda M: M.AdaptiveMaxPool2d(3), (1, 2, 8, 11), "MaxPool",
                 id="adaptive-max-non-divisible"),
    pytest.param(lambda M: M.AdaptiveMaxPool2d((5, 5)), (1, 2, 5, 5), "MaxPool",
                 id="adaptive-max-identity"),
]


@pytest.mark.parametrize("factory, shape, op", POOL_CASES)
def test_pool_module(megengine, factory, shape, op):
    import megengine.module as M

    export_and_compare(lambda: factory(M), [shape], expect_ops=[op])


def _f(call):
    def forward(self, x):
        import megengine.functional as F
        return call(F, self, x)
    return forward


FUNCTION_CASES = [
    pytest.param(_f(lambda F, s, x: F.max_pool2d(x, 3, 1, 1)), "MaxPool", id="max_pool2d"),
    pytest.param(_f(lambda F, s, x: F.avg_pool2d(x, 2, padding=1)), "AveragePool",
                 id="avg_pool2d-exclude"),
    pytest.param(_f(lambda F, s, x: F.avg_pool2d(x, 3, 2, 1, mode="average")), "AveragePool",
                 id="avg_pool2d-average"),
    pytest.param(_f(lambda F, s, x: F.adaptive_avg_pool2d(x, (3, 2))), "AveragePool",
                 id="adaptive_avg_pool2d"),
    pytest.param(_f(lambda F, s, x: F.adaptive_max_pool2d(x, 1)), "GlobalMaxPool",
                 id="adaptive_max_pool2d-global"),
    pytest.param(_f(lambda F, s, x: F.adaptive_max_pool2d(x, s.size)), "MaxPool",
                 id="adaptive_max_pool2d-tensor-oshp"),
]


@pytest.mark.parametrize("forward, op", FUNCTION_CASES)
def test_pool_function(megengine, forward, op):
    size = {"size": np.array([2, 3], dtype=np.int32)}
    export_and_compare(functional_net(forward, **size), [(2, 3, 8, 7)], expect_ops=[op])


@pytest.mark.parametrize("build, attribute, value, message", [
    pytest.param(lambda M: M.AdaptiveAvgPool2d(2), "oshp", (9, 9), "larger than the input",
                 id="adaptive-output-too-large"),
    pytest.param(lambda M: M.AvgPool2d(2), "mode", "bogus", "has no ONNX form",
                 id="unknown-mode"),
])
def test_pool_refusals(megengine, build, attribute, value, message):
    """Values MegEngine itself cannot run are set after tracing: the export must refuse
    clearly, naming the module, rather than write a wrong model."""
    import megengine.module as M
    import megengine.traced_module as tm

    import tm2onnx
    from tm2onnx.errors import ConversionError

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.pool = build(M)

        def forward(self, x):
            return self.pool(x)

    traced = tm.trace_module(Net(), megengine.Tensor(np.ones((1, 1, 4, 4), "float32")))
    setattr(traced.pool, attribute, value)
    with pytest.raises(ConversionError, match=message) as info:
        tm2onnx.export(traced)
    assert "pool" in str(info.value)


@pytest.mark.parametrize("factory, opset", [
    pytest.param(lambda M: M.AdaptiveAvgPool2d((3, 2)), 13, id="adaptive-opset13"),
    pytest.param(lambda M: M.AdaptiveMaxPool2d(1), 17, id="global"),
    pytest.param(lambda M: M.AvgPool2d(3, 2, 1), 19, id="avg-opset19"),
])
def test_pool_dynamic_batch(megengine, factory, opset):
    import megengine.module as M

    export_and_compare(lambda: factory(M), [(3, 2, 7, 6)], opset=opset, dynamic_batch=True)
