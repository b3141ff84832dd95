"""F.logsumexp (stable, MegEngine's formula), F.isnan and F.isinf (converters/special.py)
against MegEngine."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.harness import export_and_compare, lambda_net

LARGE = np.array([[1000.0, 999.0, -1000.0], [-5.0, 3.0, 88.5]], np.float32)  # exp overflows
SPECIAL = np.array([[np.nan, 1.0, np.inf], [-np.inf, 0.0, np.nan]], np.float32)
NANS = np.array([[np.nan, 1.0, 2.5], [-3.0, 0.0, np.nan]], np.float32)


def _F():
    import megengine.functional as F
    return F


CASES = [
    pytest.param(lambda x: _F().logsumexp(x, axis=1), [(2, 3, 4)], ["ReduceMax", "Squeeze"],
                 id="logsumexp-axis"),
    pytest.param(lambda x: _F().logsumexp(x, axis=-1, keepdims=True), [(2, 3, 4)],
                 ["ReduceSum", "Log"], id="logsumexp-keepdims"),
    pytest.param(lambda x: _F().logsumexp(x, axis=(0, 2)), [(2, 3, 4)], ["ReduceMax"],
                 id="logsumexp-two-axes"),
    pytest.param(lambda x: _F().logsumexp(x, axis=1), [LARGE], ["ReduceMax"],
                 id="logsumexp-large-values"),
    pytest.param(lambda x: _where_nan(x), [NANS], ["IsNaN", "Where"], id="isnan-fill"),
    pytest.param(lambda x: _F().isinf(x), [SPECIAL], ["IsInf"], id="isinf"),
]


def _where_nan(x):
    F = _F()
    return F.where(F.isnan(x), F.zeros_like(x), x)


@pytest.mark.parametrize("fn, shapes, ops", CASES)
def test_special(megengine, fn, shapes, ops):
    export_and_compare(lambda: lambda_net(fn), shapes, expect_ops=ops)
