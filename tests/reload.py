"""The loader property every test model holds: pickled, a TracedModule loads with the default
(safe) loader as the very object graph plain pickle gives, and computes the same outputs."""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def reload_both_ways(traced: Any, inputs: Sequence[np.ndarray] = (), *,
                     protocol: int | None = None) -> Any:
    """Pickle `traced`, load it safely and unsafely, assert both are the same graph (their
    re-pickled bytes are equal: same classes, names, constants — a look-alike object would
    pickle differently) and give the same outputs on `inputs`; return the safe load."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.tm"
        path.write_bytes(pickle.dumps(traced, protocol=protocol))
        return assert_loads_alike(path, inputs)


def assert_loads_alike(path: Path, inputs: Sequence[np.ndarray] = ()) -> Any:
    from tm2onnx.loading import load_traced

    safe, unsafe = load_traced(path), load_traced(path, unsafe=True)
    assert pickle.dumps(safe) == pickle.dumps(unsafe), f"{path}: safe load differs from pickle"
    if inputs:
        for got, want in zip(_outputs(safe, inputs), _outputs(unsafe, inputs)):
            np.testing.assert_array_equal(got, want, err_msg=f"{path}: outputs differ")
    return safe


def _outputs(traced: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    import megengine as mge
    from megengine.traced_module.pytree import tree_flatten

    results = traced(*[mge.Tensor(a) for a in inputs])
    leaves, _ = tree_flatten(results)
    return [np.asarray(leaf.numpy()) for leaf in leaves if hasattr(leaf, "numpy")]
