"""Linear, matmul and embedding converters against MegEngine: Gemm vs MatMul paths, bias or
none, transpose flags, 1-D operands, batch broadcasting, runtime operands, int32 indices."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.harness import export_and_compare, functional_net, randomized

LINEAR_CASES = [
    pytest.param(lambda M: M.Linear(6, 4), (3, 6), ["Gemm"], id="2d-bias"),
    pytest.param(lambda M: M.Linear(6, 4, bias=False), (3, 6), ["Gemm"], id="2d-nobias"),
    pytest.param(lambda M: M.Linear(6, 4), (2, 3, 6), ["MatMul", "Add"], id="3d-bias"),
    pytest.param(lambda M: M.Linear(6, 5, bias=False), (2, 2, 3, 6), ["MatMul"],
                 id="4d-nobias"),
    pytest.param(lambda M: M.Linear(6, 4), (6,), ["MatMul", "Add"], id="1d"),
    pytest.param(lambda M: M.BatchMatMulActivation(2, 3, 4), (2, 3, 4), ["MatMul", "Add"],
                 id="batch-matmul"),
    pytest.param(lambda M: M.BatchMatMulActivation(2, 3, 5, bias=False, nonlinear_mode="relu"),
                 (2, 3, 6), ["MatMul", "Relu"], id="batch-matmul-relu"),
]


@pytest.mark.parametrize("factory, shape, ops", LINEAR_CASES)
def test_linear_module(megengine, factory, shape, ops):
    import megengine.module as M

    # randomized: Linear's bias starts at zero, which would hide a dropped bias
    export_and_compare(lambda: randomized(factory(M), seed=1), [shape], expect_ops=ops)


_rng = np.random.default_rng(5)
_W = {"w": _rng.normal(size=(4, 6)).astype("f4"), "b": _rng.normal(size=(4,)).astype("f4"),
      "m": _rng.normal(size=(6, 3)).astype("f4")}


def _f(call):
    def forward(self, *xs):
        import megengine.functional as F
        return call(F, self, *xs)
    return forward


FUNCTION_CASES = [
    pytest.param(_f(lambda F, s, x: F.linear(x, s.w, s.b)), [(3, 6)], ["Gemm"],
                 id="linear-2d"),
    pytest.param(_f(lambda F, s, x: F.linear(x, s.w)), [(2, 3, 6)], ["MatMul"],
                 id="linear-3d-nobias"),
    pytest.param(_f(lambda F, s, x: F.linear(x, s.w, s.b)), [(2, 3, 6)], ["MatMul", "Add"],
                 id="linear-3d"),
    pytest.param(_f(lambda F, s, x, w: F.linear(x, w, s.b)), [(3, 6), (4, 6)], ["Gemm"],
                 id="linear-runtime-weight"),
    pytest.param(_f(lambda F, s, x, w: F.linear(x, w)), [(2, 3, 6), (4, 6)],
                 ["Transpose", "MatMul"], id="linear-3d-runtime-weight"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y)), [(3, 4), (4, 5)], ["MatMul"],
                 id="matmul-2d"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y)), [(2, 3, 4), (2, 4, 5)], ["MatMul"],
                 id="matmul-3d"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y)), [(2, 2, 3, 4), (2, 2, 4, 5)],
                 ["MatMul"], id="matmul-4d"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y)), [(2, 3, 4), (5, 2, 4, 6)],
                 ["MatMul"], id="matmul-broadcast-3d-4d"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y)), [(2, 3, 4), (4, 6)], ["MatMul"],
                 id="matmul-broadcast-3d-2d"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y, transpose_a=True, transpose_b=True)),
                 [(4, 3), (5, 4)], ["Transpose", "MatMul"], id="matmul-2d-ta-tb"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y, transpose_a=True)),
                 [(2, 4, 3), (4, 5)], ["Transpose", "MatMul"], id="matmul-3d-ta"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y, transpose_b=True)),
                 [(2, 2, 3, 4), (2, 2, 5, 4)], ["Transpose", "MatMul"], id="matmul-4d-tb"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y, transpose_a=True, transpose_b=True)),
                 [(4, 3), (2, 6, 4)], ["Transpose", "MatMul"], id="matmul-2d-3d-ta-tb"),
    pytest.param(_f(lambda F, s, x: F.matmul(x, s.w, transpose_b=True)), [(3, 6)],
                 ["MatMul"], id="matmul-const-tb"),
    pytest.param(_f(lambda F, s, x: F.matmul(s.m, x, transpose_a=True)), [(6, 2)],
                 ["MatMul"], id="matmul-const-lhs-ta"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y)), [(4,), (4, 5)], ["MatMul"],
                 id="matmul-1d-2d"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y)), [(3, 4), (4,)], ["MatMul"],
                 id="matmul-2d-1d"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y)), [(4,), (4,)], ["MatMul"],
                 id="matmul-1d-1d"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y)), [(3,), (2, 3, 4)], ["MatMul"],
                 id="matmul-1d-3d"),
    pytest.param(_f(lambda F, s, x, y: F.matmul(x, y, transpose_a=True)), [(1,), (1, 4)],
                 ["MatMul"], id="matmul-1d-ta-len1"),
    pytest.param(_f(lambda F, s, x, y: x @ y), [(2, 3, 4), (2, 4, 5)], ["MatMul"],
                 id="method-matmul"),
    pytest.param(_f(lambda F, s, x: x @ s.m), [(2, 6)], ["MatMul"], id="method-matmul-const"),
]


@pytest.mark.parametrize("forward, shapes, ops", FUNCTION_CASES)
def test_linear_function(megengine, forward, shapes, ops):
    export_and_compare(functional_net(forward, **_W), shapes, expect_ops=ops)


_indices = np.array([[0, 3, 9], [9, 2, 2]], dtype=np.int32)


def test_embedding_module(megengine):
    import megengine.module as M

    model = export_and_compare(lambda: M.Embedding(10, 4), [_indices], expect_ops=["Gather"])
    assert model.graph.input[0].type.tensor_type.elem_type == 6  # int32 stays int32


@pytest.mark.parametrize("indices", [pytest.param(_indices, id="2d"),
                                     pytest.param(np.arange(10, dtype=np.int32)[::-3].copy(),
                                                  id="1d")])
def test_embedding_function(megengine, indices):
    table = {"table": np.random.default_rng(2).normal(size=(10, 3)).astype("f4")}
    forward = _f(lambda F, s, i: F.embedding(i, s.table))
    export_and_compare(functional_net(forward, **table), [indices], expect_ops=["Gather"])


_half = np.random.default_rng(4).uniform(-2, 2, (2, 3, 6)).astype(np.float16)
OPTION_CASES = [
    pytest.param(lambda M: M.Linear(6, 4), [_half[0]], {}, id="float16-input-2d"),
    pytest.param(lambda M: M.Linear(6, 4), [_half[0]], {"opset": 13}, id="opset13"),
    pytest.param(lambda M: M.Linear(6, 4), [_half], {}, id="float16-input-3d"),
    pytest.param(lambda M: M.Linear(6, 4), [(5, 6)], {"dynamic_batch": True},
                 id="dynamic-batch-2d"),
    pytest.param(lambda M: M.Linear(6, 4, bias=False), [(2, 3, 6)], {"dynamic_batch": True},
                 id="dynamic-batch-3d"),
    pytest.param(lambda M: M.Embedding(10, 4), [_indices], {"dynamic_batch": True},
                 id="embedding-dynamic-batch"),
]


@pytest.mark.parametrize("factory, inputs, options", OPTION_CASES)
def test_linear_export_options(megengine, factory, inputs, options):
    import megengine.module as M

    # a float16 input meets float32 weights: MegEngine computes (and returns) float32
    export_and_compare(lambda: randomized(factory(M), seed=2), inputs, **options)


@pytest.mark.parametrize("name", ["Linear", "LinearRelu"])
def test_qat_linear_is_refused(megengine, name):
    """qat.LinearRelu subclasses qat.Linear -> Linear: converting it as a float Linear would
    silently drop its fake-quantization and its Relu. The QDQ converter (converters/quant.py)
    takes it, and refuses one without a qconfig: it has no scale to quantize with."""
    import megengine.module as M
    import megengine.traced_module as tm

    import tm2onnx
    from tm2onnx.errors import ConversionError

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            self.fc = getattr(M.qat, name)(3, 2)

        def forward(self, x):
            return self.fc(x)

    traced = tm.trace_module(Net(), megengine.Tensor(np.ones((2, 3), "float32")))
    with pytest.raises(ConversionError, match="fc: the weight has no quantization scale"):
        tm2onnx.export(traced)
