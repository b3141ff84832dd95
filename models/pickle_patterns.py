"""Small modules whose pickles hold the globals MegEngine's own TracedModule pickling writes for
ordinary code: a dtype taken from a tensor (`numpy.dtypes.Float32DType`), numpy scalars, a
dtype class kept as an attribute (`builtins.type`), `mge.Tensor(...)` inside forward
(`abc.ABCMeta`), None/Ellipsis/slices in subscripts, and container outputs."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import megengine as mge
import megengine.functional as F
import megengine.module as M
import numpy as np


class DecodeAsType(M.Module):
    """Detector box decode: deltas cast to the anchors' dtype (`y.astype(x.dtype)`)."""

    def forward(self, anchors, deltas):
        centers = (anchors[..., :2] + anchors[..., 2:]) * np.float32(0.5)
        return centers + deltas[..., :2].astype(anchors.dtype) * 0.1


class NumpyScalars(M.Module):
    """`x * np.float32(0.5)`, `+ np.int32(2)`, `F.maximum(x, np.float32(...))`: numpy scalar
    types in the args (MegEngine refuses np.float64 scalars itself)."""

    def forward(self, x):
        return F.maximum(x * np.float32(0.5) + np.int32(2), np.float32(2.25)) - np.int64(1)


class DtypeAttribute(M.Module):
    """A dtype class kept as a module attribute (`self.dt = np.float32`)."""

    def __init__(self):
        super().__init__()
        self.dt = np.float32
        self.index_dtype = np.int32

    def forward(self, x):
        zeros = F.zeros(x.shape, dtype=self.dt)
        steps = F.arange(x.shape[-1], dtype=self.index_dtype).astype(self.dt)
        return x + zeros + steps


def make_pad_mask(lengths, max_len: int):
    """True past each sequence's length (speech/text encoders): `mge.Tensor(F.arange(n))`."""
    positions = mge.Tensor(F.arange(max_len, dtype="int32"))
    return F.expand_dims(positions, 0) >= F.expand_dims(lengths, 1)


class MaskedMean(M.Module):
    """Mean over the valid frames of a padded batch."""

    def forward(self, x, lengths):
        mask = make_pad_mask(lengths, x.shape[1])
        keep = 1.0 - mask.astype(x.dtype)
        return (x * F.expand_dims(keep, -1)).sum(axis=1) / F.expand_dims(keep.sum(axis=1), -1)


class Subscripts(M.Module):
    """None, Ellipsis, steps and negative slices; dtype objects and strings; a dict output."""

    def forward(self, x):
        head = x[..., None, 1:3]
        tail = x[:, ::2, -2:].astype(np.dtype("float16")).astype("float32")
        return OrderedDict(head=head, tail=tail, flat={"sum": x.sum(axis=None)})


BUILDERS: dict[str, tuple[Any, tuple[np.ndarray, ...]]] = {
    "decode_astype": (DecodeAsType, (np.ones((2, 5, 4), np.float32),
                                     np.ones((2, 5, 4), np.float16))),
    "numpy_scalars": (NumpyScalars, (np.ones((2, 3), np.float32),)),
    "dtype_attribute": (DtypeAttribute, (np.ones((2, 3), np.float32),)),
    "pad_mask": (MaskedMean, (np.ones((3, 6, 4), np.float32),
                              np.array([6, 2, 4], np.int32))),
    "subscripts": (Subscripts, (np.ones((2, 6, 4), np.float32),)),
}


def build(name: str, seed: int = 0) -> tuple[M.Module, list[np.ndarray]]:
    """The module (eval mode) and seeded inputs of the same shapes and dtypes as BUILDERS'."""
    make, examples = BUILDERS[name]
    rng = np.random.default_rng(seed)
    inputs = [example if example.dtype.kind == "i" else
              rng.uniform(0.5, 1.5, example.shape).astype(example.dtype)
              for example in examples]
    module = make()
    module.eval()
    return module, inputs
