"""Seeded random feeds for a model's graph inputs; dynamic dims must be given, never guessed."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from tm2onnx.errors import ValidationError


def input_specs(model: onnx.ModelProto) -> list[tuple[str, list[int | str], np.dtype]]:
    """(name, dims, dtype) of each real graph input (initializers excluded); symbolic dims as str."""
    initializers = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                for d in tensor_type.shape.dim]
        specs.append((value.name, dims, np.dtype(helper.tensor_dtype_to_np_dtype(
            tensor_type.elem_type))))
    return specs


def random_feeds(model: onnx.ModelProto, *, seed: int = 0,
                 dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Feeds drawn from `np.random.default_rng(seed)`: floats in [-1, 1), ints in [0, 10), bools.

    `dims` binds symbolic dimension names (e.g. {"batch": 2}); an unbound one is an error."""
    rng = np.random.default_rng(seed)
    dims = dims or {}
    feeds = {}
    for name, shape, dtype in input_specs(model):
        concrete = []
        for dim in shape:
            if isinstance(dim, str):
                if dim not in dims:
                    raise ValidationError(
                        f"input {name!r} has symbolic dim {dim!r}",
                        hint=f"pass a size for it, e.g. --dim {dim}=1")
                dim = dims[dim]
            concrete.append(int(dim))
        feeds[name] = _random_array(rng, concrete, dtype)
    return feeds


def _random_array(rng: np.random.Generator, shape: list[int], dtype: np.dtype) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 10, size=shape).astype(dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
