"""The op tail of issue 14 against MegEngine: topk with k above the axis length (static and
after a data-dependent selection), pad widths from `x.shape`, F.nn.sliding_window and
`Tensor.to`; and the fixtures of models/tail_ops.py, each run on several input sets."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.converters.harness import export_and_compare, export_traced_and_compare, lambda_net
from tests.converters.test_detection import export_and_run
from tests.helpers import ops

RNG = np.random.default_rng(14)


def _f():
    import megengine.functional as F
    return F


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def topk_bounds(model: onnx.ModelProto) -> list:
    """For each TopK: its k as an int when constant, else the op type that computes it."""
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = _producers(model)
    found = []
    for node in model.graph.node:
        if node.op_type == "TopK":
            k = node.input[1]
            found.append(int(constants[k].reshape(-1)[0]) if k in constants
                         else producers[k].op_type)
    return found


# ---- topk: MegEngine returns the whole axis when k is larger --------------------------------
TOPK_CASES = [
    pytest.param(lambda F, x: F.topk(x, 50), (20,), [20], id="1d-k50-n20"),
    pytest.param(lambda F, x: (*F.topk(x, 9, descending=False), *F.topk(x, 4)), (3, 6), [6, 4],
                 id="2d-ascending-and-k-fits"),  # a k that fits stays as it is
    pytest.param(lambda F, x: F.topk(x, 30, kth_only=True), (3, 6), [6], id="kth-only-k30"),
]


@pytest.mark.parametrize("fn, shape, ks", TOPK_CASES)
def test_topk_k_bounded_by_axis(megengine, fn, shape, ks):
    F = _f()
    x = RNG.permutation(int(np.prod(shape))).astype(np.float32).reshape(shape)
    model = export_and_compare(lambda: lambda_net(lambda v: fn(F, v)), [x], expect_ops=["TopK"])
    assert topk_bounds(model) == ks


def test_topk_k_bounded_with_dynamic_batch(megengine):
    """A 1-D topk over a flattened batch: the axis length is read at run time (batch 1 has
    fewer elements than k, batch 4 more)."""
    F = _f()
    x = RNG.permutation(24).astype(np.float32).reshape(2, 12)
    model = export_and_run(lambda: lambda_net(lambda v: F.topk(v.reshape(-1), 30)), [x],
                           [x[:1].copy()], [np.concatenate([x, x + 30])], dynamic_batch=True)
    assert topk_bounds(model) == ["Min"]


def test_topk_after_threshold(megengine):
    """topk(cond_take(...)): kept counts 19, 6 and 24 around k=12, in one exported graph
    (MegEngine 1.13's own topk fails on an empty selection, so 0 is not compared)."""
    from models.tail_ops import build, inputs

    traced, arrays = build("threshold_topk")
    model = export_traced_and_compare(traced, arrays, *[inputs("threshold_topk", s) for s in (1, 2)])
    assert topk_bounds(model) == ["Min"]


def test_rpn_topk_levels(megengine):
    """Levels of 192, 108 and 48 anchors with pre_nms_top_n=100: k is 100, 100, 48."""
    from models.tail_ops import build, inputs

    traced, arrays = build("rpn_topk")
    model = export_traced_and_compare(traced, arrays, inputs("rpn_topk", 5))
    assert sorted(topk_bounds(model)) == [48, 100, 100]


# ---- pad widths computed from x.shape --------------------------------------------------------
def test_window_pad_static(megengine):
    """Static shapes: the widths fold into one constant pads input."""
    from models.tail_ops import build

    traced, arrays = build("window_pad")
    model = export_traced_and_compare(traced, arrays)
    assert _pads_of(model) == [[0, 0, 0, 0, 0, 0, 2, 1]]


def test_window_pad_dynamic_batch(megengine):
    """With a dynamic batch, x.shape is read at run time: so are the widths (a Concat)."""
    from models.tail_ops import build

    traced, arrays = build("window_pad")
    batch3 = [np.concatenate([arrays[0], arrays[0][:1] * 2])]
    model = export_traced_and_compare(traced, batch3, dynamic_batch=True)
    assert _pads_of(model) == ["Concat"]


def _pads_of(model: onnx.ModelProto) -> list:
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    producers = _producers(model)
    return [constants[n.input[1]].tolist() if n.input[1] in constants
            else producers[n.input[1]].op_type for n in model.graph.node if n.op_type == "Pad"]


# ---- sliding_window: (N, C, OH, OW, KH, KW) blocks ------------------------------------------
WINDOW_CASES = [  # kernel_size, padding, stride, dilation
    pytest.param((3, 0, 1, 1), id="k3"),
    pytest.param((3, 1, 1, 1), id="k3-pad1"),
    pytest.param(((2, 3), (1, 0), (2, 1), 1), id="k2x3-stride"),
    pytest.param((3, 2, 1, 2), id="k3-dilation2"),
    pytest.param(((3, 2), (0, 1), 2, (1, 3)), id="mixed"),
]


@pytest.mark.parametrize("window", WINDOW_CASES)
def test_sliding_window(megengine, window):
    F = _f()
    x = RNG.uniform(-2, 2, (2, 3, 7, 9)).astype(np.float32)
    model = export_and_compare(lambda: lambda_net(lambda v: F.nn.sliding_window(v, *window)),
                               [x], expect_ops=["Gather", "Transpose"])
    assert {"Conv", "Loop"}.isdisjoint(ops(model))  # data movement only: exact


def test_sliding_window_raw_opdef_dynamic_batch(megengine):
    """`apply(Images2Neibs)` (sliding_window imported by name), run at another batch size."""
    from megengine.core._imperative_rt.core2 import apply
    from megengine.core.ops import builtin

    op = builtin.Images2Neibs(pad_h=1, pad_w=0, stride_h=1, stride_w=2, dilate_h=2, dilate_w=1,
                              window_h=3, window_w=2)
    x = RNG.uniform(-2, 2, (2, 3, 6, 8)).astype(np.float32)
    export_and_run(lambda: lambda_net(lambda v: apply(op, v)[0] * 2), [x],
                   [np.concatenate([x, x[:1] + 1])], expect_ops=["Pad", "Gather"],
                   dynamic_batch=True)


def test_sliding_window_kernel_from_shape_dynamic_batch(megengine):
    """A window sized from `x.shape` (as CREStereo sizes it): with a dynamic batch the size is
    read at run time and the window positions are computed in the graph (Range)."""
    F = _f()
    x = RNG.uniform(-2, 2, (2, 3, 6, 8)).astype(np.float32)
    net = lambda: lambda_net(lambda v: F.nn.sliding_window(
        v, kernel_size=(v.shape[2] - 2, v.shape[3] // 2), stride=(1, 2), dilation=(1, 2)))
    model = export_and_run(net, [x], [np.concatenate([x, x[:1] - 1])], dynamic_batch=True,
                           expect_ops=["Range", "Gather"])
    assert "Conv" not in ops(model)


def test_local_correlation(megengine):
    """CREStereo's correlation: an H x W window over the replicate-padded right feature."""
    from models.tail_ops import build, inputs

    traced, arrays = build("local_correlation")
    model = export_traced_and_compare(traced, arrays, inputs("local_correlation", 3))
    assert ops(model).count("Gather") == 2 and "Conv" not in ops(model)


# ---- Tensor.to(device): apply(Copy) ----------------------------------------------------------
def test_device_move(megengine):
    from models.tail_ops import build, inputs

    traced, arrays = build("device_move")
    model = export_traced_and_compare(traced, arrays, inputs("device_move", 1))
    assert ops(model).count("Identity") >= 2 and "Copy" not in ops(model)
