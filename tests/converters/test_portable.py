"""Portable export patterns (issue 15): what every ONNX toolchain runs — no float64 MegEngine
did not compute, no rank-5 tensor where a 4-D form keeping the batch exists, no ScatterND for
slice writes known at export time — each checked against MegEngine and on the graph itself."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.converters.harness import export_and_compare, functional_net

EXACT = {"rtol": 0.0, "atol": 0.0}


def all_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    """Every tensor's element type: declared and as ONNX shape inference gives it."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    graph = inferred.graph
    return {v.name: v.type for v in (*graph.input, *graph.value_info, *graph.output)}


def assert_no_double(model: onnx.ModelProto) -> None:
    double = onnx.TensorProto.DOUBLE
    tensors = [n for n, t in all_types(model).items() if t.tensor_type.elem_type == double]
    inits = [i.name for i in model.graph.initializer if i.data_type == double]
    casts = [n.name for n in model.graph.node if n.op_type == "Cast"
             and any(a.name == "to" and a.i == double for a in n.attribute)]
    assert not (tensors or inits or casts), f"float64 in the graph: {tensors} {inits} {casts}"


def max_rank(model: onnx.ModelProto) -> int:
    return max(len(t.tensor_type.shape.dim) for t in all_types(model).values()
               if t.HasField("tensor_type"))


GRIDS = np.stack(np.meshgrid(np.arange(4), np.arange(5)), -1).reshape(1, -1, 2).astype(np.int32)
STRIDES = np.full((1, 20, 1), 8, dtype=np.int32)


def _decode(self, out, grids, strides):
    """YOLOX's decode: float32 outputs with int32 grids and strides (MegEngine: float32)."""
    import megengine.functional as F

    xy = (out[..., :2] + grids) * strides
    wh = F.exp(out[..., 2:4]) * strides
    return F.concat([xy, wh, out[..., 4:]], axis=-1), (out[..., :1] < grids[..., :1])


@pytest.mark.parametrize("shapes", [
    pytest.param([(1, 20, 6), GRIDS, STRIDES], id="int-inputs"),
    pytest.param([(1, 20, 6)], id="int-constants"),
])
def test_int_float_promotion_stays_float32(shapes):
    if len(shapes) == 1:
        factory = functional_net(lambda self, out: _decode(self, out, self.grids, self.strides),
                                 grids=GRIDS, strides=STRIDES)
    else:
        factory = functional_net(_decode)
    model = export_and_compare(factory, shapes, expect_ops=["Mul", "Add", "Less"])
    assert_no_double(model)


def test_int_floor_div_without_float64():
    """Integer floor division (negative operands: floor, not truncation) without float64."""
    a = np.array([[-7, 7, -8, 9, 0, -1]], dtype=np.int32)
    b = np.array([[2, -2, 3, 4, -5, 3]], dtype=np.int32)
    model = export_and_compare(functional_net(lambda self, x, y: (x // y, x % y)), [a, b],
                               tolerance=EXACT)
    assert_no_double(model)
