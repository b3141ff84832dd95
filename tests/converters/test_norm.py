"""Normalization converters against MegEngine, with randomized running stats and affine
parameters (so a dropped eps or a wrong fold shows) and eps=0.1 (so eps itself matters)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.converters.harness import export_and_compare, functional_net, randomized


def _stats(channels: int, seed: int, shape: tuple[int, ...] | None = None) -> dict:
    rng = np.random.default_rng(seed)
    shape = shape or (1, channels, 1, 1)
    return {"mean": rng.uniform(-1, 1, shape).astype("float32"),
            "var": rng.uniform(0.5, 2, shape).astype("float32"),
            "w": rng.uniform(-1.5, 1.5, shape).astype("float32"),
            "b": rng.uniform(-1, 1, shape).astype("float32")}


BN_CASES = [
    pytest.param(lambda M: M.BatchNorm2d(4, eps=0.1), (2, 4, 5, 5), id="bn2d-eps0.1"),
    pytest.param(lambda M: M.BatchNorm2d(4, eps=0.1, affine=False), (2, 4, 5, 5),
                 id="bn2d-noaffine"),
    pytest.param(lambda M: M.BatchNorm2d(4, momentum=0.5, freeze=True), (2, 4, 3, 3),
                 id="bn2d-freeze"),
    pytest.param(lambda M: M.BatchNorm1d(6, eps=0.1), (3, 6), id="bn1d-2d"),
    pytest.param(lambda M: M.BatchNorm1d(6, eps=0.1, affine=False), (3, 6, 7), id="bn1d-3d"),
    pytest.param(lambda M: M.BatchNorm2d(4, eps=0.1, track_running_stats=False),
                 (3, 4, 5, 5), id="bn2d-batch-stats"),
    pytest.param(lambda M: M.BatchNorm1d(6, eps=0.1, track_running_stats=False),
                 (5, 6), id="bn1d-batch-stats"),
    pytest.param(lambda M: M.SyncBatchNorm(4, eps=0.1), (2, 4, 3, 3), id="syncbn-eval"),
]


@pytest.mark.parametrize("factory, shape", BN_CASES)
def test_batch_norm_module(megengine, factory, shape):
    import megengine.module as M

    model = export_and_compare(lambda: randomized(factory(M)), [shape])
    kinds = {node.op_type for node in model.graph.node}
    # without running stats MegEngine normalizes with batch statistics: no BatchNormalization
    assert ("BatchNormalization" in kinds) == factory(M).track_running_stats, kinds


def _bn_runtime_stats(self, x, mean, var):
    import megengine.functional as F
    return F.batch_norm(x, mean, var, self.w, self.b, eps=0.1)


def _bn_const(self, x):
    import megengine.functional as F
    return F.batch_norm(x, self.mean, self.var, self.w, self.b, eps=0.1)


def _bn_training(self, x):
    import megengine.functional as F
    return F.batch_norm(x, None, None, self.w, None, training=True, eps=0.1)


positive = np.random.default_rng(3).uniform(0.5, 2, (1, 4, 1, 1)).astype("float32")
BN_FUNCTION_CASES = [
    pytest.param(functional_net(_bn_const, **_stats(4, 1)), [(2, 4, 3, 3)],
                 ["BatchNormalization"], id="const-stats"),
    pytest.param(functional_net(_bn_const, **_stats(4, 2, (1, 4, 1, 1))), [(5, 4)],
                 ["BatchNormalization"], id="const-stats-2d"),
    pytest.param(functional_net(_bn_runtime_stats, **_stats(4, 1)),
                 [(2, 4, 3, 3), (1, 4, 1, 1), positive], ["BatchNormalization", "Reshape"],
                 id="runtime-stats"),
    pytest.param(functional_net(_bn_training, **_stats(4, 1)), [(3, 4, 3, 3)],
                 ["ReduceMean", "Sqrt"], id="training-batch-stats"),
]


@pytest.mark.parametrize("factory, shapes, ops", BN_FUNCTION_CASES)
def test_batch_norm_function(megengine, factory, shapes, ops):
    export_and_compare(factory, shapes, expect_ops=ops)


NORM_CASES = [
    pytest.param(lambda M: M.LayerNorm(8, eps=0.1), (2, 3, 8), 17, "LayerNormalization",
                 id="ln-last"),
    pytest.param(lambda M: M.LayerNorm((4, 5)), (2, 3, 4, 5), 17, "LayerNormalization",
                 id="ln-2axes"),
    pytest.param(lambda M: M.LayerNorm(8, affine=False), (4, 8), 17, "LayerNormalization",
                 id="ln-noaffine"),
    pytest.param(lambda M: M.LayerNorm((4, 5), eps=0.1), (2, 3, 4, 5), 13, "ReduceMean",
                 id="ln-opset13"),
    pytest.param(lambda M: M.LayerNorm(8, eps=0.1, affine=False), (2, 8), 16, "ReduceMean",
                 id="ln-opset16-noaffine"),
    pytest.param(lambda M: M.GroupNorm(2, 6, eps=0.1), (2, 6, 4, 4), 17, "ReduceMean",
                 id="gn-g2"),
    pytest.param(lambda M: M.GroupNorm(3, 6, affine=False), (2, 6, 3, 5), 18, "ReduceMean",
                 id="gn-noaffine-opset18"),
    pytest.param(lambda M: M.InstanceNorm(4, eps=0.1), (2, 4, 5, 5), 17,
                 "InstanceNormalization", id="in"),
    pytest.param(lambda M: M.InstanceNorm(4, affine=False), (2, 4, 5, 5), 17,
                 "InstanceNormalization", id="in-noaffine"),
    pytest.param(lambda M: M.GeneralNorm((3, 4), (1, 2), eps=0.1), (2, 3, 4, 5), 17,
                 "ReduceMean", id="general-contiguous"),
    pytest.param(lambda M: M.GeneralNorm((2, 5), (0, -1)), (2, 3, 4, 5), 18, "ReduceMean",
                 id="general-gapped-opset18"),
    pytest.param(lambda M: M.GeneralNorm((4,), (2,), affine=False), (2, 3, 4), 17,
                 "ReduceMean", id="general-noaffine"),
]


@pytest.mark.parametrize("factory, shape, opset, op", NORM_CASES)
def test_norm_module(megengine, factory, shape, opset, op):
    import megengine.module as M

    export_and_compare(lambda: randomized(factory(M)), [shape], expect_ops=[op], opset=opset)


def _fn(call: Callable[..., Any]) -> Callable[..., Any]:
    def forward(self, x):
        import megengine.functional as F
        return call(F, self, x)
    return forward


_rng = np.random.default_rng(7)
_ln_w = {"w": _rng.uniform(-1, 1, (4, 5)).astype("f4"), "b": _rng.uniform(-1, 1, (4, 5))
         .astype("f4")}
_ch_w = {"w": _rng.uniform(-1, 1, (6,)).astype("f4"), "b": _rng.uniform(-1, 1, (6,))
         .astype("f4")}
FUNCTION_CASES = [
    pytest.param(_fn(lambda F, s, x: F.layer_norm(x, (4, 5), True, s.w, s.b, eps=0.1)), _ln_w,
                 (2, 3, 4, 5), 17, "LayerNormalization", id="layer_norm"),
    pytest.param(_fn(lambda F, s, x: F.layer_norm(x, (4, 5), True, s.w, s.b, eps=0.1)), _ln_w,
                 (2, 3, 4, 5), 14, "ReduceMean", id="layer_norm-opset14"),
    pytest.param(_fn(lambda F, s, x: F.layer_norm(x, 5, False)), {}, (3, 5), 17,
                 "LayerNormalization", id="layer_norm-noaffine"),
    pytest.param(_fn(lambda F, s, x: F.nn.group_norm(x, 3, True, s.w, s.b, eps=0.1)), _ch_w,
                 (2, 6, 3, 3), 17, "ReduceMean", id="group_norm"),
    pytest.param(_fn(lambda F, s, x: F.nn.instance_norm(x, True, s.w, s.b, eps=0.1)), _ch_w,
                 (2, 6, 3, 3), 17, "InstanceNormalization", id="instance_norm"),
    pytest.param(_fn(lambda F, s, x: F.nn.general_norm(x, (0, 2), False, eps=0.1)), {},
                 (3, 4, 5), 17, "ReduceMean", id="general_norm"),
    pytest.param(_fn(lambda F, s, x: F.normalize(x, axis=1)), {}, (3, 4, 5), 17, "ReduceL2",
                 id="normalize-l2"),
    pytest.param(_fn(lambda F, s, x: F.normalize(x, 1, axis=-1, eps=1.0)), {}, (3, 4), 17,
                 "ReduceL1", id="normalize-l1-neg-axis-eps"),
    pytest.param(_fn(lambda F, s, x: F.normalize(x, 3, axis=0)), {}, (3, 4), 18, "Pow",
                 id="normalize-p3-opset18"),
    pytest.param(_fn(lambda F, s, x: F.normalize(x, float("inf"), axis=1)), {}, (3, 4), 17,
                 "ReduceMax", id="normalize-inf"),
    pytest.param(_fn(lambda F, s, x: F.normalize(x, -float("inf"), axis=1)), {}, (3, 4), 13,
                 "ReduceMin", id="normalize-neg-inf-opset13"),
    pytest.param(_fn(lambda F, s, x: F.normalize(x, 0, axis=1)), {}, (3, 4), 17, "ReduceSum",
                 id="normalize-l0"),
    pytest.param(_fn(lambda F, s, x: F.normalize(x)), {}, (6,), 17, "ReduceL2",
                 id="normalize-vector"),
]


@pytest.mark.parametrize("forward, tensors, shape, opset, op", FUNCTION_CASES)
def test_norm_function(megengine, forward, tensors, shape, opset, op):
    export_and_compare(functional_net(forward, **tensors), [shape], expect_ops=[op],
                       opset=opset)


def test_batch_norm_eps_is_exported(megengine):
    """The older converter dropped eps: with eps=0.1 that is off by ~0.19, so check the attr."""
    import megengine.module as M

    model = export_and_compare(lambda: randomized(M.BatchNorm2d(3, eps=0.1)), [(1, 3, 2, 2)])
    (node,) = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    (eps,) = [a.f for a in node.attribute if a.name == "epsilon"]
    assert eps == pytest.approx(0.1)


DYNAMIC_CASES = [
    pytest.param(lambda M: M.BatchNorm2d(4, eps=0.1), (3, 4, 2, 2), 17, id="bn"),
    pytest.param(lambda M: M.BatchNorm1d(4, eps=0.1, track_running_stats=False), (3, 4), 13,
                 id="bn-batch-stats-opset13"),
    pytest.param(lambda M: M.GroupNorm(2, 4, eps=0.1), (3, 4, 2, 3), 17, id="gn"),
    pytest.param(lambda M: M.LayerNorm(5, eps=0.1), (3, 4, 5), 13, id="ln-opset13"),
    pytest.param(lambda M: M.InstanceNorm(4, eps=0.1), (3, 4, 2, 3), 17, id="in"),
]


@pytest.mark.parametrize("factory, shape, opset", DYNAMIC_CASES)
def test_norm_dynamic_batch(megengine, factory, shape, opset):
    """With a symbolic batch the decompositions must not bake in the traced batch size."""
    import megengine.module as M

    export_and_compare(lambda: randomized(factory(M)), [shape], opset=opset,
                       dynamic_batch=True)
