"""Feeds for a model's graph inputs: seeded random ones (dynamic dims must be given, never
guessed; integer inputs kept inside the tables they index), or the user's .npz / .npy files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from tm2onnx.errors import ValidationError

from .bounds import index_bounds

DEFAULT_INT_RANGE = (0, 10)


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


def int_ranges(model: onnx.ModelProto, int_range: tuple[int, int] | None = None
               ) -> dict[str, tuple[int, int, str]]:
    """[low, high) per integer input: an explicit `int_range` wins; else the size of the
    embedding/Gather table the input indexes; else [0, 10)."""
    bounds = index_bounds(model)
    ranges = {}
    for name, _, dtype in input_specs(model):
        if not np.issubdtype(dtype, np.integer):
            continue
        if int_range is not None:
            ranges[name] = (*int_range, "--int-range")
        elif name in bounds:
            ranges[name] = (0, bounds[name][0], bounds[name][1])
        else:
            ranges[name] = (*DEFAULT_INT_RANGE, "default")
    return ranges


def random_feeds(model: onnx.ModelProto, *, seed: int = 0, dims: dict[str, int] | None = None,
                 int_range: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
    """Feeds drawn from `np.random.default_rng(seed)`: floats in [-1, 1), bools, and integers
    in the range `int_ranges` gives.

    `dims` binds symbolic dimension names (e.g. {"batch": 2}); an unbound one is an error."""
    rng = np.random.default_rng(seed)
    ranges = int_ranges(model, int_range)
    return {name: _random_array(rng, concrete_shape(name, shape, dims or {}), dtype,
                                ranges.get(name))
            for name, shape, dtype in input_specs(model)}


# What a symbolic input dim is given when the user names no size: Polygraphy's choice too.
FILLED_DIM = 1


def fill_dims(model: onnx.ModelProto, dims: dict[str, int] | None = None
              ) -> tuple[dict[str, int], dict[str, int]]:
    """(`dims` plus FILLED_DIM for each symbolic input dim it lacks, the filled ones), so a
    model with dynamic axes can run; the caller reports the filled ones. An unnamed dynamic
    dim is keyed "?"."""
    given = dict(dims or {})
    filled = {dim: FILLED_DIM for _, shape, _ in input_specs(model) for dim in shape
              if isinstance(dim, str) and dim not in given}
    return {**given, **filled}, filled


def concrete_shape(name: str, shape: list[int | str], dims: dict[str, int]) -> list[int]:
    concrete = []
    for dim in shape:
        if isinstance(dim, str):
            if dim not in dims:
                raise ValidationError(f"input {name!r} has symbolic dim {dim!r}",
                                      hint=f"pass a size for it, e.g. --dim {dim}=1")
            dim = dims[dim]
        concrete.append(int(dim))
    return concrete


def _random_array(rng: np.random.Generator, shape: list[int], dtype: np.dtype,
                  int_range: tuple[int, int, str] | None) -> np.ndarray:
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if np.issubdtype(dtype, np.integer):
        low, high, _ = int_range or (*DEFAULT_INT_RANGE, "")
        return rng.integers(low, high, size=shape).astype(dtype)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def load_inputs(paths: str | list[str], model: onnx.ModelProto) -> list[dict[str, np.ndarray]]:
    """Feeds from `FILE.npz` (keys = input names, or arr_0... by position) or `a.npy,b.npy`
    (by position). A leading dim of N where the model takes 1 gives N samples, run one by one.
    Wrong names, shapes or dtypes are one-line errors; nothing runs."""
    arrays = _read_arrays(paths if isinstance(paths, list) else paths.split(","))
    specs = input_specs(model)
    by_name = _assign(arrays, specs)
    samples = {name: _samples(name, by_name[name], shape, dtype) for name, shape, dtype in specs}
    counts = {len(parts) for parts in samples.values()}
    if len(counts) > 1:
        raise ValidationError(f"inputs hold different sample counts: "
                              f"{ {name: len(p) for name, p in samples.items()} }")
    count = counts.pop() if counts else 1
    return [{name: parts[i] for name, parts in samples.items()} for i in range(count)]


def _read_arrays(paths: list[str]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for index, path in enumerate(p.strip() for p in paths if p.strip()):
        if not Path(path).is_file():
            raise ValidationError("no such file", where=path, hint="--inputs FILE.npz or a.npy,b.npy")
        try:
            loaded = np.load(path, allow_pickle=False)
        except Exception as err:
            raise ValidationError(f"not a .npy/.npz file: {err}", where=path) from err
        if isinstance(loaded, np.ndarray):
            arrays[f"arr_{index}"] = loaded
        else:
            arrays.update({key: loaded[key] for key in loaded.files})
    return arrays


def _assign(arrays: dict[str, np.ndarray], specs: list) -> dict[str, np.ndarray]:
    names = [name for name, _, _ in specs]
    if set(arrays) <= set(names):
        missing = [name for name in names if name not in arrays]
    else:
        positional = [f"arr_{i}" for i in range(len(arrays))]
        unknown = sorted(set(arrays) - set(positional))
        if unknown:
            raise ValidationError(f"--inputs has {unknown}, not inputs of the model",
                                  hint=f"use the input names {names} or arr_0... by position")
        if len(positional) > len(names):
            raise ValidationError(f"--inputs gives {len(positional)} arrays",
                                  hint=f"the model takes {len(names)}: {names}")
        arrays = {names[i]: arrays[key] for i, key in enumerate(positional)}
        missing = names[len(positional):]
    if missing:
        raise ValidationError(f"--inputs gives no value for input(s) {missing}",
                              hint=f"the model takes {names}")
    return arrays


def _samples(name: str, array: np.ndarray, shape: list, dtype: np.dtype) -> list[np.ndarray]:
    expected = f"the model takes {name} {[str(d) for d in shape]} {dtype}"
    if array.dtype != dtype:
        raise ValidationError(f"input {name!r} is {array.dtype}", hint=expected)
    if _fits(array.shape, shape):
        return [array]
    if shape and shape[0] == 1 and array.ndim == len(shape) and _fits(array.shape[1:], shape[1:]):
        return [array[i:i + 1] for i in range(array.shape[0])]
    raise ValidationError(f"input {name!r} has shape {list(array.shape)}", hint=expected)


def _fits(actual: tuple[int, ...], shape: list) -> bool:
    return len(actual) == len(shape) and all(
        not isinstance(want, int) or want == got for got, want in zip(actual, shape))
