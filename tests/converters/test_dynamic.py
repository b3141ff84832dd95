"""dynamic_batch=True: shape-dependent code (`x.reshape(x.shape[0], -1)`, `x[:, :x.shape[1]//2]`)
is exported as run-time Shape arithmetic, so one model serves batch 1, 2 and 5 like MegEngine."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import FP32, assert_matches, run_ort

BATCHES = (1, 2, 5)


def conv_flatten_matmul():
    import megengine
    import megengine.functional as F
    import megengine.module as M

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(3)
            self.conv = M.Conv2d(3, 4, 3, padding=1)
            self.w = megengine.Parameter(rng.normal(size=(4 * 6 * 6, 5)).astype("float32"))

        def forward(self, x):
            y = F.relu(self.conv(x))
            return F.matmul(y.reshape(y.shape[0], -1), self.w)

    return Net(), (3, 6, 6), ["Conv", "Shape", "Reshape", "MatMul"]


def half_channels():
    import megengine.module as M

    class Net(M.Module):
        def forward(self, x):
            return x[:, : x.shape[1] // 2] * 2, x[:, x.shape[1] // 2:]

    return Net(), (6, 4), ["Shape", "Slice"]


def flattens():
    import megengine.functional as F
    import megengine.module as M

    class Net(M.Module):
        def forward(self, x):
            return F.flatten(x, 1), x.flatten(1, 2), x.flatten()

    return Net(), (2, 3, 4), ["Reshape"]


def layout_mix():
    import megengine.functional as F
    import megengine.module as M
    from megengine.core._imperative_rt.core2 import apply
    from megengine.core.ops.builtin import GetVarShape

    class Net(M.Module):
        def forward(self, x):
            batch = apply(GetVarShape(axis=0), x)[0]  # a raw apply, as `x.shape` records
            n, c, h, w = x.shape
            y = x.reshape(n, 2, c // 2, h, w).transpose(0, 2, 1, 3, 4).reshape(n, -1, h, w)
            left, right = F.split(y, [1], axis=1)
            z = x + 0
            z[:, 1] = 0.5
            return (F.repeat(left, 2, 1), F.concat([right, y], 1), x[-1], z,
                    F.pixel_shuffle(x.reshape(n, 1, c, h, w), 2), F.squeeze(x[:, :1], 1),
                    x.reshape(batch, -1, w)[:, c - 1])

    return Net(), (4, 3, 2), ["Shape", "Transpose", "Split", "Tile", "Expand", "DepthToSpace",
                              "Gather"]


def set_rows():
    """x[:, 0] = v with v following the batch: Slice + Expand(Shape) + Concat."""
    import megengine.module as M

    class Net(M.Module):
        def forward(self, x):
            y = x + 0
            y[:, 0] = x[:, 1] * 2
            y[:, 2:, 1] = 0.5
            return y

    return Net(), (3, 2), ["Shape", "Expand", "Concat"]


NETS = [pytest.param(conv_flatten_matmul, id="conv-reshape-matmul"),
        pytest.param(set_rows, id="set-rows"),
        pytest.param(half_channels, id="slice-half-channels"),
        pytest.param(flattens, id="flatten"),
        pytest.param(layout_mix, id="layout-mix")]


@pytest.mark.parametrize("make", NETS)
def test_dynamic_batch(megengine, make):
    import megengine.traced_module as tm

    import tm2onnx

    net, sample_shape, expect_ops = make()
    net.eval()
    rng = np.random.default_rng(0)
    example = rng.uniform(-2, 2, size=(2, *sample_shape)).astype(np.float32)
    traced = tm.trace_module(net, megengine.Tensor(example))
    model = tm2onnx.export(traced, dynamic_batch=True)
    graph_input = model.graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param == "batch"
    present = {node.op_type for node in model.graph.node}
    assert set(expect_ops) <= present, f"expected {expect_ops} in {sorted(present)}"
    for batch in BATCHES:
        x = rng.uniform(-2, 2, size=(batch, *sample_shape)).astype(np.float32)
        expected = traced(megengine.Tensor(x))  # re-runs the graph: shape code re-evaluated
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        reference = {out.name: value.numpy() for out, value in zip(model.graph.output, expected)}
        assert_matches(reference, run_ort(model, {graph_input.name: x}), **FP32)


def test_dynamic_refusals(megengine):
    """What cannot follow a changing batch is refused with a hint, not exported wrong."""
    import megengine.functional as F
    import megengine.module as M
    import megengine.traced_module as tm

    import tm2onnx
    from tm2onnx.errors import ConversionError

    class SetRows(M.Module):
        def __init__(self):
            super().__init__()
            self.v = megengine.Tensor(np.arange(2, dtype=np.float32))  # one per traced row

        def forward(self, x):
            y = x + 0
            y[:, 0] = self.v
            return y

    class SplitBatch(M.Module):
        def forward(self, x):
            return F.split(x, 2)

    cases = [(SetRows(), [(2, 3)], "export without dynamic_batch"),
             (SplitBatch(), [(4, 3)], "give split indices")]
    for net, shapes, hint in cases:
        inputs = [megengine.Tensor(np.ones(shape, dtype=np.float32)) for shape in shapes]
        traced = tm.trace_module(net, *inputs)
        with pytest.raises(ConversionError, match=hint):
            tm2onnx.export(traced, dynamic_batch=True)
        tm2onnx.export(traced)  # static shapes are fine
