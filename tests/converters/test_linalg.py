"""F.matinv as unrolled Gauss-Jordan elimination with partial pivoting, against MegEngine on
well-conditioned matrices (condition number at most 4): batched and not, up to n = 32,
matrices that need row swaps (a zero leading pivot), the raw MatrixInverse OpDef, a dynamic
batch, NBNet's subspace projection (models/tail_ops.py); and the refusal above the limit."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.harness import export_and_compare, export_traced_and_compare, lambda_net
from tests.converters.test_detection import export_and_run
from tests.helpers import ops

# fp32 elimination error grows with n and the condition number; MegEngine's own inverse is
# fp32 too: measured max|diff| / max|inverse| 1e-7 (n=4) to 9e-7 (n=32), 1.6e-6 at n=64
INVERSE = {"rtol": 1e-4, "atol": 1e-5}


def well_conditioned(batch: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    """Random orthogonal Q times singular values in [1, 4], times another orthogonal:
    a condition number of at most 4, no structure the elimination could exploit."""
    rng = np.random.default_rng(seed)
    count = int(np.prod(batch)) if batch else 1
    q1 = np.linalg.qr(rng.normal(size=(count, n, n)))[0]
    q2 = np.linalg.qr(rng.normal(size=(count, n, n)))[0]
    sigma = rng.uniform(1.0, 4.0, (count, n))
    a = q1 @ (sigma[:, :, None] * q2)
    return a.reshape(*batch, n, n).astype(np.float32)


def needs_pivoting(n: int, seed: int) -> np.ndarray:
    """A row-permuted, diagonally dominant matrix: every diagonal entry is small (the first
    is 0), so elimination without row swaps divides by ~0."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-0.2, 0.2, (n, n)) + np.eye(n) * 3.0
    a = a[np.roll(np.arange(n), 1)]
    a[0, 0] = 0.0
    return a.astype(np.float32)


CASES = [
    pytest.param((), 1, id="1x1"),
    pytest.param((), 2, id="2x2"),
    pytest.param((3,), 3, id="b3-3x3"),
    pytest.param((2, 3), 4, id="b2x3-4x4"),
    pytest.param((2,), 8, id="b2-8x8"),
    pytest.param((2,), 16, id="b2-16x16"),
    pytest.param((1,), 32, id="b1-32x32"),
]


@pytest.mark.parametrize("batch, n", CASES)
def test_matinv(megengine, batch, n):
    import megengine.functional as F

    a = well_conditioned(batch, n, seed=n)
    model = export_and_compare(lambda: lambda_net(F.matinv), [a], tolerance=INVERSE,
                               expect_ops=["ArgMax", "GatherElements", "Div"])
    assert "Inverse" not in ops(model)
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}


@pytest.mark.parametrize("n", [3, 6])
def test_matinv_needs_row_swaps(megengine, n):
    """A zero first pivot: without partial pivoting this is inf/nan."""
    import megengine.functional as F

    a = np.stack([needs_pivoting(n, seed) for seed in range(3)])
    export_and_compare(lambda: lambda_net(F.matinv), [a], tolerance=INVERSE)


def test_matrix_inverse_opdef_dynamic_batch(megengine):
    """Raw `apply(MatrixInverse)` (matinv imported by name), traced at batch 2, run at 5."""
    from megengine.core._imperative_rt.core2 import apply
    from megengine.core.ops import builtin

    net = lambda: lambda_net(lambda v: apply(builtin.MatrixInverse(), v)[0])
    export_and_run(net, [well_conditioned((2,), 5, 0)], [well_conditioned((5,), 5, 1)],
                   tolerance=INVERSE, dynamic_batch=True, expect_ops=["GatherElements"])


def test_subspace_projection(megengine):
    """NBNet's projection onto 8 learned basis vectors: (V V^T)^-1 of a Gram matrix."""
    from models.tail_ops import build, inputs

    traced, arrays = build("subspace_projection")
    model = export_traced_and_compare(traced, arrays, inputs("subspace_projection", 4),
                                      tolerance={"rtol": 1e-4, "atol": 1e-4})
    assert "Inverse" not in ops(model) and ops(model).count("ArgMax") == 8


def test_matinv_too_large_refused(megengine):
    import megengine.functional as F

    from tm2onnx.errors import ConversionError

    a = well_conditioned((), 65, 0)
    with pytest.raises(ConversionError, match=r"matinv .* shape \(65, 65\).*n <= 64"):
        export_and_compare(lambda: lambda_net(F.matinv), [a])
