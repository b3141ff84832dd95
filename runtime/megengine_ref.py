"""Run a TracedModule on the same numpy feeds as onnxruntime, to get reference outputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def run_traced(traced: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Outputs of `traced(*inputs)` as numpy arrays, in the traced graph's output order."""
    import megengine as mge

    traced.eval()
    result = traced(*[mge.Tensor(np.asarray(x)) for x in inputs])
    if not isinstance(result, (tuple, list)):
        result = (result,)
    return [np.asarray(value.numpy()) for value in _flatten(result)]


def _flatten(values: Any) -> list:
    flat = []
    for value in values:
        if isinstance(value, (tuple, list)):
            flat.extend(_flatten(value))
        elif isinstance(value, dict):
            flat.extend(_flatten(list(value.values())))
        else:
            flat.append(value)
    return flat
