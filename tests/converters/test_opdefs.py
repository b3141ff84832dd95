"""Raw apply(OpDef) exprs, as traced from a helper module that imported MegEngine functions by
name (models/named_ops.py): each fixture must really trace to that OpDef, and the export must
match MegEngine numerically."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.harness import export_and_compare, lambda_net
from tests.helpers import FP32

# case -> ONNX ops that must appear (the case name before "-" is the OpDef type it traces to)
EXPECTED = {
    "MatrixMul": ["MatMul", "Transpose"], "MatrixMul-linear": ["MatMul"],
    "BatchedMatrixMul": ["MatMul"], "Softmax": ["Softmax"], "Split": ["Split"],
    "Concat": ["Concat"], "Concat-0d": ["Reshape", "Concat"], "Stack": ["Unsqueeze", "Concat"],
    "Elemwise-relu": ["Relu"], "Elemwise-sigmoid": ["Sigmoid", "Exp"], "Elemwise-gelu": ["Erf"],
    "Elemwise-max": ["Max"], "Elemwise-clip": ["Clip"], "Elemwise-prelu": ["PRelu"],
    "Broadcast": ["Expand"], "AddAxis": ["Unsqueeze"], "RemoveAxis": ["Squeeze"],
    "Argmax": ["ArgMax", "Cast"], "Cumsum": ["CumSum"], "Padding": ["Pad"],
    "Resize": ["Resize"], "AdaptivePooling": ["AveragePool"], "Reduce": ["ReduceSum"],
    "Reduce-keepdim": ["ReduceMax"], "Reduce-all": ["ReduceMean"], "Dimshuffle": ["Transpose"],
    "Reshape": ["Reshape"], "TypeCvt": ["Cast"], "LayerNorm": ["LayerNormalization"],
}
REFUSED = {"Where"}  # F.where traces to a generic subgraph OpDef (see test below)
SHAPES = [(6, 4), (6, 4)]


def _traced_opdefs(fn) -> set[str]:
    import megengine as mge
    import megengine.traced_module as tm
    from megengine.traced_module.expr import Apply

    from tests.converters.harness import make_inputs

    traced = tm.trace_module(lambda_net(fn), *[mge.Tensor(a) for a in make_inputs(SHAPES)])
    return {type(e.opdef).__name__ for e in traced.graph.exprs() if isinstance(e, Apply)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_opdef(megengine, name):
    from models.named_ops import OPS

    fn = OPS[name]
    opdef = name.split("-")[0]
    assert opdef in _traced_opdefs(fn), f"fixture {name} does not trace to apply({opdef})"
    export_and_compare(lambda: lambda_net(fn), SHAPES, expect_ops=EXPECTED[name], tolerance=FP32)


def test_every_fixture_is_tested():
    from models.named_ops import OPS

    assert set(OPS) == set(EXPECTED) | REFUSED


def test_where_opdef_is_refused_by_name(megengine):
    """F.where traces to a generic subgraph OpDef: refused in the no-converter error."""
    import megengine.traced_module as tm

    import tm2onnx
    from models.named_ops import where
    from tm2onnx.errors import UnsupportedOpError

    net = lambda_net(lambda x, y: where(x > y, x, y))
    x = megengine.Tensor(np.ones((2, 3), "float32"))
    with pytest.raises(UnsupportedOpError, match=r"apply\(OpDef\)"):
        tm2onnx.export(tm.trace_module(net, x, x * 2))


def test_attention_helper_module(megengine):
    """The CLIP-port pattern end to end: attention written with by-name imports."""
    import megengine as mge
    import megengine.module as M

    from models.named_ops import attention

    rng = np.random.default_rng(3)

    class Block(M.Module):
        def __init__(self):
            super().__init__()
            self.qkv_w = mge.Parameter(rng.normal(0, 0.3, (24, 8)).astype("float32"))
            self.qkv_b = mge.Parameter(rng.normal(0, 0.3, (24,)).astype("float32"))
            self.proj_w = mge.Parameter(rng.normal(0, 0.3, (8, 8)).astype("float32"))

        def forward(self, x):
            return attention(x, self.qkv_w, self.qkv_b, self.proj_w, heads=2)

    model = export_and_compare(Block, [(2, 5, 8)], expect_ops=["MatMul", "Softmax", "Split"])
    assert "Softmax" in [n.op_type for n in model.graph.node]
