"""mge.Tensor(t) / mge.Parameter(t) of traced tensors and F.meshgrid (and raw MeshGrid) on
run-time vectors (converters/creation.py), against MegEngine."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.harness import export_and_compare, lambda_net

LENGTHS = np.array([3, 5, 1], np.int32)


def _mge():
    import megengine as mge
    return mge


def _F():
    import megengine.functional as F
    return F


def _apply_meshgrid(indexing):
    from megengine.core._imperative_rt.core2 import apply
    from megengine.core.ops import builtin

    return lambda x, y: apply(builtin.MeshGrid(indexing), x, y)


CASES = [
    pytest.param(lambda x: _mge().Tensor(x) * 2, [(2, 3)], ["Identity"], id="Tensor-float"),
    pytest.param(lambda n: _F().arange(5, dtype="int32").reshape(1, -1)
                 >= _mge().Tensor(n).reshape(-1, 1), [LENGTHS], ["Identity", "GreaterOrEqual"],
                 id="Tensor-of-lengths-pad-mask"),
    pytest.param(lambda x: _mge().Tensor(x, dtype="float32", device=x.device) / 3, [(2, 3)],
                 ["Identity"], id="Tensor-dtype-device"),
    pytest.param(lambda x: _mge().Parameter(x) + 1, [(2, 3)], ["Identity"], id="Parameter"),
    pytest.param(lambda x, y: _F().meshgrid(x, y), [(3,), (4,)], ["Expand"], id="meshgrid-xy"),
    pytest.param(lambda x, y: _F().meshgrid(x, y, indexing="ij"), [(3,), (4,)], ["Expand"],
                 id="meshgrid-ij"),
    pytest.param(lambda x, y, z: _F().meshgrid(x, y, z), [(2,), (3,), (4,)], ["Expand"],
                 id="meshgrid-xy-3d"),
    pytest.param(lambda x, y: _F().meshgrid(x, y, indexing="ij"),
                 [LENGTHS, np.arange(4, dtype=np.int32)], ["Expand"], id="meshgrid-int32"),
    pytest.param(lambda x, y: _apply_meshgrid("xy")(x, y), [(3,), (2,)], ["Expand"], id="apply-MeshGrid-xy"),
]


@pytest.mark.parametrize("fn, shapes, ops", CASES)
def test_creation(megengine, fn, shapes, ops):
    export_and_compare(lambda: lambda_net(fn), shapes, expect_ops=ops)


def test_coordinate_grid_from_shape_with_dynamic_batch(megengine):
    """RAFT's coords_grid: under a dynamic batch `x.shape` is not folded, so the arange
    vectors and the grid are computed at run time (batch 3 against MegEngine's batch 3)."""
    import megengine.functional as F

    def coords(x):
        b, _, h, w = x.shape
        ys, xs = F.meshgrid(F.arange(h, dtype="int32"), F.arange(w, dtype="int32"),
                            indexing="ij")
        grid = F.stack([xs, ys], axis=0).astype(x.dtype)
        # Not x[:, :2] + grid: MegEngine 1.13 adds a sliced tensor and a broadcast one wrongly
        return x.mean(1, keepdims=True) + F.broadcast_to(F.expand_dims(grid, 0), (b, 2, h, w))

    export_and_compare(lambda: lambda_net(coords), [(2, 3, 4, 5)], expect_ops=["Expand"],
                       dynamic_batch=True)


def test_tensor_of_a_list_of_traced_values_is_refused(megengine):
    """`mge.Tensor([a, b])` of traced 0-d tensors: refused by name, with the F.stack hint."""
    import megengine as mge
    import megengine.traced_module as tm

    import tm2onnx
    from tm2onnx.errors import ConversionError

    net = lambda_net(lambda x: mge.Tensor([x[0, 0], x[1, 1]]))
    traced = tm.trace_module(net, mge.Tensor(np.ones((2, 3), np.float32)))
    with pytest.raises(ConversionError, match=r"Tensor\(\.\.\.\) of list holding traced values"
                                              r".*F\.stack"):
        tm2onnx.export(traced)
