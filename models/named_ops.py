"""A helper module that imports MegEngine functions by name, as real ports do (the CLIP port's
`from megengine.functional import linear, matmul, softmax, split`): TracedModule patches only
the globals of each traced forward's own module, so these calls are traced as raw apply(OpDef)."""

from __future__ import annotations

import numpy as np
from megengine import Tensor
from megengine.core._imperative_rt.core2 import apply
from megengine.core.ops import builtin
from megengine.functional import (
    argmax,
    broadcast_to,
    clip,
    concat,
    cumsum,
    exp,
    expand_dims,
    gelu,
    leaky_relu,
    linear,
    matmul,
    maximum,
    relu,
    sigmoid,
    softmax,
    split,
    squeeze,
    stack,
    where,
)
from megengine.functional.nn import adaptive_avg_pool2d, interpolate, layer_norm, pad


def attention(x, qkv_weight, qkv_bias, proj_weight, heads: int):
    """Multi-head self-attention written with by-name imports (MatrixMul, Split,
    BatchedMatrixMul, Softmax and Elemwise applies)."""
    batch, tokens, channels = x.shape
    qkv = linear(x, qkv_weight, qkv_bias)
    q, k, v = split(qkv, 3, axis=2)
    q, k, v = (t.reshape(batch, tokens, heads, -1).transpose(0, 2, 1, 3) for t in (q, k, v))
    scores = softmax(matmul(q, k, transpose_b=True) * (channels // heads) ** -0.5, axis=-1)
    out = matmul(scores, v).transpose(0, 2, 1, 3).reshape(batch, tokens, channels)
    return linear(out, proj_weight)


# one function per OpDef, for tests/converters/test_opdefs.py
OPS = {
    "MatrixMul": lambda x, y: matmul(x, y, transpose_b=True),
    "MatrixMul-linear": lambda x, y: linear(x, y),
    "BatchedMatrixMul": lambda x, y: matmul(x.reshape(2, 3, 4), y.reshape(2, 4, 3)),
    "Softmax": lambda x, y: softmax(x, axis=1),
    "Split": lambda x, y: split(x, [1, 3], axis=1)[1],
    "Concat": lambda x, y: concat([x, y], axis=1),
    "Concat-0d": lambda x, y: concat([x[0, 0], y[1, 1], x[2, 3]]),
    "Stack": lambda x, y: stack([x, y], axis=1),
    "Elemwise-relu": lambda x, y: relu(x),
    "Elemwise-sigmoid": lambda x, y: sigmoid(x) + exp(y),
    "Elemwise-gelu": lambda x, y: gelu(x),
    "Elemwise-max": lambda x, y: maximum(x, y),
    "Elemwise-clip": lambda x, y: clip(x, -0.5, 0.7),
    "Elemwise-prelu": lambda x, y: leaky_relu(x, 0.1),
    "Broadcast": lambda x, y: broadcast_to(x[:1], (3, 6, 4)),
    "AddAxis": lambda x, y: expand_dims(x, (0, 2)),
    "RemoveAxis": lambda x, y: squeeze(expand_dims(x, 0), 0),
    "Where": lambda x, y: where(x > y, x, y),  # a generic subgraph OpDef: refused
    "Argmax": lambda x, y: argmax(x, axis=1),
    "Cumsum": lambda x, y: cumsum(x, 1),
    "LayerNorm": lambda x, y: layer_norm(x, (4,), affine=False),
    "Padding": lambda x, y: pad(x, ((1, 2), (0, 1))),
    "Resize": lambda x, y: interpolate(x.reshape(1, 1, 6, 4), size=(12, 8)),
    "AdaptivePooling": lambda x, y: adaptive_avg_pool2d(x.reshape(1, 1, 6, 4), (3, 2)),
    # OpDefs MegEngine's functions reach only through patched tensor methods: applied directly
    "Reduce": lambda x, y: apply(builtin.Reduce(mode="sum", axis=1, keepdim=False), x)[0],
    "Reduce-keepdim": lambda x, y: apply(builtin.Reduce(mode="max", axis=0), x)[0],
    "Reduce-all": lambda x, y: apply(builtin.Reduce(mode="mean"), x)[0],
    "Dimshuffle": lambda x, y: apply(builtin.Dimshuffle(pattern=[1, -1, 0]), x)[0],
    "Reshape": lambda x, y: apply(builtin.Reshape(), x, Tensor(np.array([4, 6], np.int32)))[0],
    "TypeCvt": lambda x, y: apply(builtin.TypeCvt(dtype=np.dtype(np.int32)), x * 3)[0],
}
