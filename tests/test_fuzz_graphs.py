"""Random valid ONNX graphs for property tests: Conv/ConvTranspose 1-3-D (groups, kernels,
strides, pads, bias), BatchNormalization, Mul/Div/Add/Sub by constants of many broadcast shapes
on either side, Gemm/MatMul, Relu, Concat, shared weights and intermediates, mid-graph outputs,
Constant nodes, a symbolic batch, opsets 13-21; and the shapes fold-shapes/fuse-conv-bn rewrite:
two one-axis Slices, x+0 / x*1, BN before an unpadded Conv or behind a MatMul + flatten,
Reshape -> Gemm/MatMul(+Add) -> Reshape around a Linear layer on 3-D, a Reshape target read
from the input's own Shape, parallel projections of one tensor (Q, K, V), a Concat
of Gathers along their axis, Squeeze -> Unsqueeze of one unit axis, Flatten -> Reshape,
a scaled projection (MatMul + bias, maybe split into heads, then a constant), and more."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

BATCH = 2  # the value fed for the symbolic batch
PATTERN = "_pattern"  # the name suffix of a node a forced step expects to be rewritten away


@dataclass
class Builder:
    draw: st.DrawFn
    rng: np.random.Generator
    symbolic: bool
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    tensors: list = field(default_factory=list)  # (name, concrete shape) of every value
    weights: dict = field(default_factory=dict)  # weight shape -> name, for sharing
    shapes: dict = field(default_factory=dict)  # every value's concrete shape
    count: int = 0
    private: bool = False  # the next emitted value is no candidate for sharing
    tagging: bool = False  # in the forced step: its `tag`ged nodes get the PATTERN suffix

    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, base: str, value: np.ndarray, node_ok: bool = True) -> str:
        name = self.fresh(base)
        value = value.astype(np.float32)
        kind = self.draw(st.integers(0, 5)) if node_ok else 5
        if kind == 0:  # a Constant node (its tensor unnamed, as exporters write it)
            self.nodes.append(helper.make_node("Constant", [], [name],
                                               value=numpy_helper.from_array(value)))
        elif kind == 1:  # a constant subgraph a folding pass can evaluate: part + rest
            part = self.rng.standard_normal(value.shape).astype(np.float32)
            self.nodes.append(helper.make_node("Constant", [], [name + "_a"],
                                               value=numpy_helper.from_array(part)))
            self.inits.append(numpy_helper.from_array(value - part, name + "_b"))
            self.nodes.append(helper.make_node("Add", [name + "_a", name + "_b"], [name]))
        else:
            self.inits.append(numpy_helper.from_array(value, name))
        return name

    def const_int(self, base: str, value: list[int]) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.int64), name))
        return name

    def emit(self, op: str, inputs: list[str], shape: tuple[int, ...], private: bool = False,
             tag: bool = False, **attrs) -> str:
        """A node; a `private` output (inside a pattern that a rewrite merges) is read by the
        next node only, so no later step shares it; a `tag`ged node (named *PATTERN) is the
        one that rewrite removes."""
        out = self.fresh(op.lower())
        name = out + (PATTERN if tag and self.tagging else "_node")
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        self.shapes[out] = shape
        if not (private or self.private):
            self.tensors.append((out, shape))
        self.private = False
        return out


def _normal(b: Builder, shape, scale=1.0) -> np.ndarray:
    return (b.rng.standard_normal(shape) * scale).astype(np.float32)


def conv(b: Builder, x: str, shape: tuple[int, ...], transpose: bool,
         unpadded: bool = False) -> tuple[str, tuple]:
    cin, spatial = shape[1], shape[2:]
    groups = b.draw(st.sampled_from([g for g in (1, 2, 3, 4) if cin % g == 0]))
    cout = groups * b.draw(st.integers(1, 3))
    kernel = tuple(b.draw(st.integers(1, 3)) for _ in spatial)
    strides = tuple(b.draw(st.integers(1, 2)) for _ in spatial)
    pads = [0 if unpadded else b.draw(st.integers(0, 1)) for _ in spatial] * 2
    wshape = (cin, cout // groups, *kernel) if transpose else (cout, cin // groups, *kernel)
    key = ("ConvTranspose" if transpose else "Conv", wshape, groups)
    if key in b.weights and b.draw(st.booleans()):
        weight = b.weights[key]  # a weight shared with an earlier layer
    else:
        weight = b.const("w", _normal(b, wshape, 1 / np.sqrt(np.prod(wshape[1:]))), False)
        b.weights[key] = weight
    inputs = [x, weight]
    if b.draw(st.booleans()):
        inputs.append(b.const("bias", _normal(b, (cout,)), False))
    if transpose:
        out = tuple((n - 1) * s - 2 * p + k for n, s, p, k in zip(spatial, strides, pads, kernel))
    else:
        out = tuple((n + 2 * p - k) // s + 1 for n, s, p, k in zip(spatial, strides, pads, kernel))
    if min(out) < 1:
        return x, shape
    op = "ConvTranspose" if transpose else "Conv"
    new_shape = (shape[0], cout, *out)
    return b.emit(op, inputs, new_shape, group=groups, kernel_shape=list(kernel),
                  strides=list(strides), pads=pads), new_shape


def batchnorm(b: Builder, x: str, shape: tuple[int, ...], tag: bool = False
              ) -> tuple[str, tuple]:
    c = shape[1]
    # A tagged BN must fold: fuse-conv-bn (deploy's first step) reads initializers only.
    ok = not tag
    params = [b.const("scale", _normal(b, (c,)), ok), b.const("shift", _normal(b, (c,)), ok),
              b.const("mean", _normal(b, (c,)), ok),
              b.const("var", b.rng.uniform(0.2, 2.0, c).astype(np.float32), ok)]
    eps = b.draw(st.sampled_from([1e-5, 1e-3, 0.1, 0.5]))
    return b.emit("BatchNormalization", [x, *params], shape, tag=tag, epsilon=eps), shape


def _broadcast_shape(b: Builder, shape: tuple[int, ...]) -> tuple[int, ...]:
    rank = b.draw(st.integers(0, len(shape)))
    dims = [b.draw(st.sampled_from([1, d])) for d in shape[len(shape) - rank:]]
    if rank == len(shape) and dims:
        dims[0] = 1  # the batch may be symbolic
    if b.draw(st.integers(0, 7)) == 0:
        dims = [1, *dims] if rank == len(shape) else dims  # one rank more than the output
    return tuple(dims)


def elementwise(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    op = b.draw(st.sampled_from(["Mul", "Div", "Add", "Sub"]))
    cshape = _broadcast_shape(b, shape)
    if op in ("Mul", "Div"):
        value = b.rng.uniform(0.5, 2.0, cshape) * b.rng.choice([-1, 1], cshape)
    else:
        value = _normal(b, cshape)
    c = b.const("c", np.asarray(value))
    first = b.draw(st.booleans()) and op != "Div"  # c / x divides by values near 0
    inputs = [c, x] if first else [x, c]
    new_shape = np.broadcast_shapes(shape, cshape)
    return b.emit(op, inputs, tuple(new_shape)), tuple(new_shape)


def linear(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    if len(shape) != 2:
        x = b.emit("Flatten", [x], (shape[0], int(np.prod(shape[1:]))), axis=1)
        shape = (shape[0], int(np.prod(shape[1:])))
    k, n = shape[1], b.draw(st.integers(1, 8))
    if b.draw(st.booleans()):
        trans = b.draw(st.booleans())
        w = b.const("w", _normal(b, (n, k) if trans else (k, n), 1 / np.sqrt(k)), False)
        inputs = [x, w] + ([b.const("bias", _normal(b, (n,)), False)]
                           if b.draw(st.booleans()) else [])
        return b.emit("Gemm", inputs, (shape[0], n), transB=int(trans)), (shape[0], n)
    w = b.const("w", _normal(b, (k, n), 1 / np.sqrt(k)), False)
    return b.emit("MatMul", [x, w], (shape[0], n)), (shape[0], n)


def joined(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """Concat or Add with an earlier value of the same shape: a shared intermediate."""
    same = [name for name, s in b.tensors if s == shape and name != x]
    if not same:
        return b.emit("Relu", [x], shape), shape
    other = b.draw(st.sampled_from(same))
    if b.draw(st.booleans()):
        return b.emit("Add", [x, other], shape), shape
    new_shape = (shape[0], shape[1] * 2, *shape[2:])
    return b.emit("Concat", [x, other], new_shape, axis=1), new_shape


def slices(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """Slice on one axis, then on another: one multi-axis Slice after fold-shapes."""
    if len(shape) < 2:  # a rank-1 value (linear_rows can flatten): no axis past the batch
        return elementwise(b, x, shape)
    axes = b.draw(st.permutations(range(1, len(shape))))[:2] if len(shape) > 2 else [1]
    inner = None
    for axis in axes:
        size = shape[axis]
        step = b.draw(st.sampled_from([1, 1, 2, -1]))
        if step > 0:
            start, end = b.draw(st.integers(0, size - 1)), b.draw(st.sampled_from([size, 2**62]))
        else:
            start, end = size - 1, b.draw(st.sampled_from([-(2**62), 0]))
        index = [slice(None)] * len(shape)
        index[axis] = slice(start, end, step)
        new_shape = np.empty(shape, np.int8)[tuple(index)].shape
        if 0 in new_shape:
            break
        signed = axis - len(shape) if b.draw(st.booleans()) else axis
        ints = [b.const_int(f"sl{what}", [v]) for what, v in
                (("starts", start), ("ends", end), ("axes", signed), ("steps", step))]
        if step == 1 and b.draw(st.booleans()):
            ints = ints[:3]  # steps defaulted
        x, shape = b.emit("Slice", [x, *ints], new_shape, private=inner is None,
                          tag=inner is None and len(axes) > 1), new_shape
        inner = x
    return x, shape


def unit(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """x + 0, 0 + x, x - 0, x * 1, 1 * x, x / 1 with a constant that does not grow x."""
    op = b.draw(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
    cshape = _broadcast_shape(b, shape)
    if len(cshape) > len(shape):
        cshape = cshape[1:]
    c = b.const("u", np.full(cshape, 1.0 if op in ("Mul", "Div") else 0.0), node_ok=False)
    first = b.draw(st.booleans()) and op in ("Add", "Mul")
    return b.emit(op, [c, x] if first else [x, c], shape, tag=True), shape


def bn_then_conv(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """A BN whose only reader is an unpadded Conv: folded into that Conv."""
    if not 3 <= len(shape) <= 5:
        return elementwise(b, x, shape)
    x = b.emit("Relu", [x], shape)  # no Conv right before the BN
    b.private = True
    y, shape = batchnorm(b, x, shape, tag=True)
    out, out_shape = conv(b, y, shape, False, unpadded=True)
    if out == y:  # no Conv fits: the BN stays, as a tagged node must not
        b.nodes[-1].name = b.nodes[-1].output[0] + "_node"
    return out, out_shape


def bn_alone(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """A BN between Relus: nothing to fold into, so it stays one node."""
    if not 3 <= len(shape) <= 5:
        return elementwise(b, x, shape)
    x = b.emit("Relu", [x], shape)
    b.private = True
    x, shape = batchnorm(b, x, shape, tag=True)
    return b.emit("Relu", [x], shape), shape


def matmul_flatten_bn(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """MatMul on [..., C] -> flatten to [M, C'] -> BN (LeViT): folded into a Gemm."""
    if len(shape) < 3:
        return linear(b, x, shape)
    k, n = shape[-1], b.draw(st.integers(1, 6))
    w = b.const("w", _normal(b, (k, n), 1 / np.sqrt(k)), False)
    out_shape = (*shape[:-1], n)
    y = b.emit("MatMul", [x, w], out_shape, private=True)
    rows = int(np.prod(out_shape[:-1]))
    if b.draw(st.booleans()):
        flat = b.emit("Flatten", [y], (rows, n), private=True, axis=len(shape) - 1)
    else:
        target = b.const_int("flat", [b.draw(st.sampled_from([-1, rows])), n])
        flat = b.emit("Reshape", [y, target], (rows, n), private=True)
    return batchnorm(b, flat, (rows, n), tag=True)


@st.composite
def graphs(draw: st.DrawFn, force: str | None = None) -> onnx.ModelProto:
    """A random model; `force` names a step (of STEPS) that then comes once, at a random
    place, in a graph of rank >= 3 (and a symbolic batch for `unit` and `shape_target`)."""
    b = Builder(draw, np.random.default_rng(draw(st.integers(0, 2**32 - 1))),
                force in ("unit", "shape_target") or draw(st.booleans()))
    rank = draw(st.integers(3 if force else 2, 5))
    shape = (BATCH, draw(st.integers(1, 4)), *(draw(st.integers(3, 6)) for _ in range(rank - 2)))
    x = "x"
    b.tensors.append((x, shape))
    count = draw(st.integers(1, 6))
    forced_at = draw(st.integers(0, count - 1)) if force else -1
    for i in range(count):
        step = force if i == forced_at else draw(st.sampled_from(
            ["conv", "convT", "bn", "elementwise", "elementwise", "linear", "relu", "joined",
             *STEPS]))
        if i == forced_at and (x == "x" or x in b.outputs):
            x = b.emit("Relu", [x], shape)  # a no-op bypass must not join input to output
        b.tagging = i == forced_at
        if step in ("conv", "convT", "bn") and not 3 <= len(shape) <= 5:
            step = "elementwise"
        if step == "relu":
            x = b.emit("Relu", [x], shape)
        elif step in ("conv", "convT"):
            x, shape = conv(b, x, shape, step == "convT")
        else:
            x, shape = {"bn": batchnorm, "elementwise": elementwise, "linear": linear,
                        "joined": joined, **STEPS}[step](b, x, shape)
        if draw(st.integers(0, 5)) == 0 and x != "x" and x not in b.outputs:
            b.outputs.append(x)  # an output in mid-graph that later nodes also read
    if x not in b.outputs:
        b.outputs.append(x)
    return _model(b, rank, draw(st.integers(13, 21)), draw(st.booleans()))


def linear_rows(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """nn.Linear on [B, ..., C] as exporters write it: Reshape to [M, C] -> Gemm (transB,
    alpha, beta, bias [K] or [1, K]) or MatMul (+ Add) -> Reshape back (one -1 at the batch),
    or for MatMul to another shape: the first Reshape goes in fold-shapes."""
    if len(shape) < 3:
        return linear(b, x, shape)
    c, k, rows = shape[-1], b.draw(st.integers(1, 6)), int(np.prod(shape[:-1]))
    first = b.draw(st.sampled_from([-1, rows])) if not b.symbolic else -1
    r = b.emit("Reshape", [x, b.const_int("rows", [first, c])], (rows, c), private=True, tag=True)
    kind = b.draw(st.sampled_from(["gemm", "matmul", "matmul_add"]))
    bias = b.const("bias", _normal(b, b.draw(st.sampled_from([(k,), (1, k)]))), False)
    if kind == "gemm":
        trans = b.draw(st.booleans())
        w = b.const("w", _normal(b, (k, c) if trans else (c, k), 1 / np.sqrt(c)), False)
        alpha, beta = (b.draw(st.sampled_from([1.0, 0.5])) for _ in range(2))
        inputs = [r, w] + ([bias] if b.draw(st.booleans()) else [])
        m = b.emit("Gemm", inputs, (rows, k), private=True, transB=int(trans), alpha=alpha,
                   beta=beta)
    else:
        w = b.const("w", _normal(b, (c, k), 1 / np.sqrt(c)), False)
        m = b.emit("MatMul", [r, w], (rows, k), private=True)
        if kind == "matmul_add":
            m = b.emit("Add", [m, bias], (rows, k), private=True)
    lead = [-1 if b.symbolic or b.draw(st.booleans()) else shape[0], *shape[1:-1]]
    out_shape = (*shape[:-1], k)
    if kind != "gemm" and not b.symbolic and b.draw(st.booleans()):
        # Back to anything else (Swin's split into heads): the first Reshape still goes.
        out_shape = b.draw(st.sampled_from([(rows * k,), (k, rows), (1, rows, k)]))
        lead, k = list(out_shape[:-1]), out_shape[-1]
    return b.emit("Reshape", [m, b.const_int("back", [*lead, k])], out_shape), out_shape


def shape_target(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """Reshape(x, Concat(x's leading dims read one by one through Shape -> Gather [->
    Unsqueeze], the rest merged as a constant)): with a symbolic batch the target becomes a
    constant with 0 for the dims copied from x."""
    if len(shape) < 2:
        return elementwise(b, x, shape)
    keep = b.draw(st.integers(1, len(shape) - 1))
    size = b.emit("Shape", [x], (len(shape),), private=True)
    pieces = []
    for axis in range(keep):
        if b.draw(st.booleans()):
            dim = b.emit("Gather", [size, b.const_int("at", [axis])], (1,), private=True)
        else:
            index = b.fresh("at")
            b.inits.append(numpy_helper.from_array(np.asarray(axis, np.int64), index))
            scalar = b.emit("Gather", [size, index], (), private=True)
            dim = b.emit("Unsqueeze", [scalar, b.const_int("axes", [0])], (1,), private=True)
        pieces.append(dim)
    rest = int(np.prod(shape[keep:]))
    pieces.append(b.const_int("rest", [b.draw(st.sampled_from([-1, rest]))]))
    target = b.emit("Concat", pieces, (keep + 1,), private=True, tag=True, axis=0)
    out_shape = (*shape[:keep], rest)
    return b.emit("Reshape", [x, target], out_shape), out_shape


def parallel(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """Two or three MatMuls reading x with their own weights [C, Ni] (attention's Q, K, V),
    each with a bias Add or not, joined by a Concat on the last axis in any order; a branch
    may also be a graph output: fold-shapes merges them into one MatMul and a Split."""
    if len(shape) < 3:
        return linear(b, x, shape)
    c, count = shape[-1], b.draw(st.integers(2, 3))
    biased = b.draw(st.sampled_from(["all", "none", "some"]))
    branches = []
    for index in range(count):
        n = b.draw(st.integers(1, 5))
        w = b.const("w", _normal(b, (c, n), 1 / np.sqrt(c)))
        y = b.emit("MatMul", [x, w], (*shape[:-1], n), private=True, tag=True)
        if biased == "all" or (biased == "some" and index == 0):
            bias = b.const("bias", _normal(b, (n,)))
            y = b.emit("Add", [bias, y] if b.draw(st.booleans()) else [y, bias],
                       (*shape[:-1], n), private=True)
        if b.draw(st.integers(0, 3)) == 0:
            b.outputs.append(y)
        branches.append((y, n))
    order = b.draw(st.permutations(range(count)))
    out_shape = (*shape[:-1], sum(n for _, n in branches))
    return b.emit("Concat", [branches[i][0] for i in order], out_shape, axis=-1), out_shape


def gathers(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """Concat along axis a of pieces of x taken along a: Gather of a 1-D index list or
    Unsqueeze(Gather of a scalar index), indices int32/int64 and maybe negative, axes signed
    at random: one Gather after fold-shapes (x itself when every index comes once, in order)."""
    if len(shape) < 2:
        return elementwise(b, x, shape)
    axis = b.draw(st.integers(1, len(shape) - 1))
    size, pieces, taken = shape[axis], [], 0

    def signed(a: int, rank: int) -> int:
        return a - rank if b.draw(st.booleans()) else a

    for _ in range(b.draw(st.integers(2, 4))):
        picked = [b.draw(st.integers(0, size - 1)) for _ in range(b.draw(st.integers(1, 3)))]
        picked = [i - size if b.draw(st.booleans()) else i for i in picked]
        dtype = b.draw(st.sampled_from([np.int64, np.int32]))
        index = b.fresh("gi")
        scalar = len(picked) == 1 and b.draw(st.booleans())
        value = np.asarray(picked[0] if scalar else picked, dtype)
        b.inits.append(numpy_helper.from_array(value, index))
        piece_shape = (*shape[:axis], len(picked), *shape[axis + 1:])
        if scalar:
            dropped = (*shape[:axis], *shape[axis + 1:])
            g = b.emit("Gather", [x, index], dropped, private=True, axis=signed(axis, len(shape)))
            axes = b.const_int("ua", [signed(axis, len(shape))])
            piece = b.emit("Unsqueeze", [g, axes], piece_shape, private=True, tag=True)
        else:
            piece = b.emit("Gather", [x, index], piece_shape, private=True,
                           axis=signed(axis, len(shape)))
        pieces.append(piece)
        taken += len(picked)
    new_shape = (*shape[:axis], taken, *shape[axis + 1:])
    return b.emit("Concat", pieces, new_shape, tag=True, axis=signed(axis, len(shape))), new_shape


def squeeze_pair(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """Unsqueeze(x, a) -> Squeeze(a) -> Unsqueeze(a) (axes signed at random): the last two
    undo each other and go in fold-shapes."""
    rank = len(shape) + 1
    axis = b.draw(st.integers(1, rank - 1))
    wide = (*shape[:axis], 1, *shape[axis:])

    def axes() -> str:
        return b.const_int("sq", [axis - rank if b.draw(st.booleans()) else axis])

    u = b.emit("Unsqueeze", [x, axes()], wide, private=True)
    s = b.emit("Squeeze", [u, axes()], shape, private=True, tag=True)
    return b.emit("Unsqueeze", [s, axes()], wide, tag=True), wide


def flatten_reshape(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """Flatten (axis 1 under a symbolic batch, any axis else) then a Reshape to [rows or 0,
    (1,) cols or -1]: one Reshape after fold-shapes."""
    axis = 1 if b.symbolic else b.draw(st.integers(0, len(shape)))
    rows, cols = int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:]))
    signed = axis - len(shape) if axis and b.draw(st.booleans()) else axis
    flat = b.emit("Flatten", [x], (rows, cols), private=True, tag=True, axis=signed)
    first = 0 if axis == 1 and (b.symbolic or b.draw(st.booleans())) else rows
    middle = [1] if b.draw(st.booleans()) else []
    last = -1 if first and b.draw(st.booleans()) else cols
    out_shape = (rows, *middle, cols)
    return b.emit("Reshape", [flat, b.const_int("fr", [first, *middle, last])], out_shape), \
        out_shape



def scaled_projection(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    """MatMul [C, N] + bias Add (either order) on [B, ..., C], maybe split into two heads
    (Reshape with copied leading dims -> Transpose), then Mul/Div/Add/Sub by a constant: one
    value (rank up to the tensor's) after the heads split, per channel without it (Whisper's
    and DETR's query scale): absorb-const folds it into the weights and the bias."""
    if len(shape) < 2:
        return elementwise(b, x, shape)
    c, n = shape[-1], b.draw(st.sampled_from([2, 4, 6]))
    w = b.const("w", _normal(b, (c, n), 1 / np.sqrt(c)), False)
    y_shape = (*shape[:-1], n)
    m = b.emit("MatMul", [x, w], y_shape, private=True)
    bias = b.const("bias", _normal(b, (n,)), False)
    y = b.emit("Add", [m, bias] if b.draw(st.booleans()) else [bias, m], y_shape, private=True)
    if b.draw(st.booleans()):
        split = (*shape[:-1], 2, n // 2)
        target = b.const_int("heads", [0] * (len(shape) - 1) + [2, n // 2])
        r = b.emit("Reshape", [y, target], split, private=True)
        perm = list(range(len(split)))
        perm[-3], perm[-2] = perm[-2], perm[-3]
        y_shape = tuple(split[p] for p in perm)
        y = b.emit("Transpose", [r], y_shape, private=True, perm=perm)
        c_shape = b.draw(st.sampled_from([(), (1,), (1,) * len(y_shape)]))
    else:
        c_shape = b.draw(st.sampled_from([(), (n,), (1,) * (len(y_shape) - 1) + (n,)]))
    op = b.draw(st.sampled_from(["Mul", "Div", "Add", "Sub"]))
    value = _normal(b, c_shape)
    if op == "Div":
        value = np.where(np.abs(value) < 0.25, 0.5, value)  # no divisor near zero
    k = b.const("s", value, False)
    inputs = [y, k] if op == "Div" or b.draw(st.booleans()) else [k, y]
    return b.emit(op, inputs, y_shape, tag=True), y_shape

# The rewrites of fold-shapes and fuse-conv-bn these steps make (tests count them).
STEPS = {"slices": slices, "unit": unit, "bn_then_conv": bn_then_conv, "bn_alone": bn_alone,
         "matmul_flatten_bn": matmul_flatten_bn, "linear_rows": linear_rows,
         "shape_target": shape_target, "parallel": parallel, "gathers": gathers,
         "squeeze_pair": squeeze_pair, "flatten_reshape": flatten_reshape,
         "scaled_projection": scaled_projection}


def _model(b: Builder, rank: int, opset: int, with_shapes: bool) -> onnx.ModelProto:
    shapes = {**b.shapes, **dict(b.tensors)}
    in_shape = shapes["x"]
    dims = ["batch" if b.symbolic else BATCH, *in_shape[1:]]
    graph = helper.make_graph(
        b.nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None] * len(shapes[name]))
         for name in b.outputs],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    if with_shapes:
        model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model, full_check=True)
    return model
