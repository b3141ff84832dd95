"""`x[i, j]` with several array indices (numpy advanced indexing, as MegEngine 1.13 does it):
broadcast index arrays, slices and `None` between or around them, integers joining the
arrays, negative and run-time indices; CLIP's end-of-text pooling (models/tail_ops.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.harness import (
    export_and_compare,
    export_traced_and_compare,
    functional_net,
)
from tests.converters.test_detection import export_and_run
from tests.helpers import ops

X = np.random.default_rng(3).uniform(-2, 2, (4, 5, 6, 7)).astype(np.float32)
I2 = np.array([0, 3], np.int32)
J2 = np.array([4, 1], np.int32)
COLUMN = np.array([[0], [2], [3]], np.int32)  # (3, 1): broadcasts against a (2,) row
ROW = np.array([1, 4], np.int32)
NEGATIVE = np.array([-1, 2], np.int32)

# (index built from x and the run-time index inputs a, b, id): what MegEngine gets
CASES = [
    pytest.param(lambda x, a, b: x[a, b], (I2, J2), id="two-arrays"),
    pytest.param(lambda x, a, b: x[:, a, b], (I2, J2), id="slice-then-arrays"),
    pytest.param(lambda x, a, b: x[a, :, b], (I2, ROW), id="slice-between"),
    pytest.param(lambda x, a, b: x[a, 1:4, b], (I2, ROW), id="range-between"),
    pytest.param(lambda x, a, b: x[a, ::2, :, b], (I2, ROW), id="step-between"),
    pytest.param(lambda x, a, b: x[a, b, 2:], (I2, J2), id="arrays-then-range"),
    pytest.param(lambda x, a, b: x[a, b], (COLUMN, ROW), id="broadcast"),
    pytest.param(lambda x, a, b: x[a, :, b], (COLUMN, ROW), id="broadcast-apart"),
    pytest.param(lambda x, a, b: x[..., a, b], (COLUMN, ROW), id="ellipsis"),
    pytest.param(lambda x, a, b: x[1, a, b], (I2, J2), id="int-joins-arrays"),
    pytest.param(lambda x, a, b: x[:, a, :, 2], (J2, J2), id="int-apart"),
    pytest.param(lambda x, a, b: x[a, b, a + 1], (I2, J2), id="three-arrays"),
    pytest.param(lambda x, a, b: x[:, a, None, b], (J2, ROW), id="none-between"),
    pytest.param(lambda x, a, b: x[None, a, b], (I2, J2), id="none-before"),
    pytest.param(lambda x, a, b: x[a, b], (NEGATIVE, NEGATIVE - 2), id="negative"),
    pytest.param(lambda x, a, b: x[a.reshape(2, 1), b.reshape(1, 2)] * 2, (I2, J2),
                 id="2d-indices"),
]


@pytest.mark.parametrize("fn, indices", CASES)
def test_several_array_indices(megengine, fn, indices):
    net = functional_net(lambda self, x, a, b: fn(x, a, b))
    model = export_and_compare(net, [X, *indices], expect_ops=["GatherND"])
    assert ops(model).count("GatherND") == 1


def test_constant_and_runtime_index(megengine):
    """One index a module constant, one computed at run time (argmax)."""
    import megengine.functional as F

    rows = np.array([2, 0, 1], np.int32)
    net = functional_net(lambda self, x: x[self.rows, F.argmax(x, -1)[:3, 0]], rows=rows)
    export_and_compare(net, [X[:, 0, :, :5].copy()], expect_ops=["GatherND", "ArgMax"])


def test_arange_rows_dynamic_batch(megengine):
    """`x[F.arange(B), idx]` with B read at run time: traced at batch 4, run at batch 2."""
    import megengine.functional as F

    net = functional_net(lambda self, x, idx: x[F.arange(x.shape[0], dtype="int32"), idx])
    x3 = X[:, :, :, 0].copy()
    export_and_run(net, [x3, np.array([1, 4, 0, 2], np.int32)],
                   [x3[:2].copy(), np.array([3, 3], np.int32)], dynamic_batch=True,
                   expect_ops=["GatherND", "Range"])


def test_eot_pool(megengine):
    """CLIP's `x[F.arange(B), text.argmax(-1)]`, end-of-text at other places on rerun."""
    from models.tail_ops import build, inputs

    traced, arrays = build("eot_pool")
    model = export_traced_and_compare(traced, arrays, inputs("eot_pool", 7))
    assert "GatherND" in ops(model)


def test_indices_of_data_dependent_length(megengine):
    """Row and column of the positive entries (`cond_take`'s flat index // W, % W): the
    index length is known only at run time, so the broadcast shape is computed there."""
    import megengine.functional as F

    def fn(self, x, m):
        _, flat = F.cond_take(m > 0, m)
        return x[flat // 7, flat % 7] * 2
    x, m = X[0, 0], X[1, 1]
    export_and_run(functional_net(fn), [x, m], [x, m - 1.5], [x + 1, np.abs(m)],
                   expect_ops=["GatherND", "NonZero"])
