"""Random valid ONNX graphs for property tests: Conv/ConvTranspose 1-3-D (groups, kernels,
strides, pads, bias), BatchNormalization, Mul/Div/Add/Sub by constants of many broadcast shapes
on either side, Gemm/MatMul, Relu, Concat, shared weights and intermediates, mid-graph outputs,
Constant nodes, a symbolic batch, opsets 13-21."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

BATCH = 2  # the value fed for the symbolic batch


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
    count: int = 0

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

    def emit(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out + "_node", **attrs))
        self.tensors.append((out, shape))
        return out


def _normal(b: Builder, shape, scale=1.0) -> np.ndarray:
    return (b.rng.standard_normal(shape) * scale).astype(np.float32)


def conv(b: Builder, x: str, shape: tuple[int, ...], transpose: bool) -> tuple[str, tuple]:
    cin, spatial = shape[1], shape[2:]
    groups = b.draw(st.sampled_from([g for g in (1, 2, 3, 4) if cin % g == 0]))
    cout = groups * b.draw(st.integers(1, 3))
    kernel = tuple(b.draw(st.integers(1, 3)) for _ in spatial)
    strides = tuple(b.draw(st.integers(1, 2)) for _ in spatial)
    pads = [b.draw(st.integers(0, 1)) for _ in spatial] * 2
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


def batchnorm(b: Builder, x: str, shape: tuple[int, ...]) -> tuple[str, tuple]:
    c = shape[1]
    params = [b.const("scale", _normal(b, (c,))), b.const("shift", _normal(b, (c,))),
              b.const("mean", _normal(b, (c,))),
              b.const("var", b.rng.uniform(0.2, 2.0, c).astype(np.float32))]
    eps = b.draw(st.sampled_from([1e-5, 1e-3, 0.1, 0.5]))
    return b.emit("BatchNormalization", [x, *params], shape, epsilon=eps), shape


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


@st.composite
def graphs(draw: st.DrawFn) -> onnx.ModelProto:
    """A random model and the dims to feed it (the symbolic batch)."""
    b = Builder(draw, np.random.default_rng(draw(st.integers(0, 2**32 - 1))),
                draw(st.booleans()))
    rank = draw(st.integers(2, 5))
    shape = (BATCH, draw(st.integers(1, 4)), *(draw(st.integers(3, 6)) for _ in range(rank - 2)))
    x = "x"
    b.tensors.append((x, shape))
    for _ in range(draw(st.integers(1, 6))):
        step = draw(st.sampled_from(["conv", "convT", "bn", "elementwise", "elementwise",
                                     "linear", "relu", "joined"]))
        if step in ("conv", "convT", "bn") and not 3 <= len(shape) <= 5:
            step = "elementwise"
        if step == "relu":
            x = b.emit("Relu", [x], shape)
        elif step in ("conv", "convT"):
            x, shape = conv(b, x, shape, step == "convT")
        else:
            x, shape = {"bn": batchnorm, "elementwise": elementwise, "linear": linear,
                        "joined": joined}[step](b, x, shape)
        if draw(st.integers(0, 5)) == 0 and x != "x" and x not in b.outputs:
            b.outputs.append(x)  # an output in mid-graph that later nodes also read
    if x not in b.outputs:
        b.outputs.append(x)
    return _model(b, rank, draw(st.integers(13, 21)), draw(st.booleans()))


def _model(b: Builder, rank: int, opset: int, with_shapes: bool) -> onnx.ModelProto:
    shapes = dict(b.tensors)
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
