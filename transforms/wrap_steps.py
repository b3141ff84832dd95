"""Built-in steps for `wrap`, written as strings. Input steps, listed from the raw input to the
model: "uint8", "nhwc", "scale:1/255", "normalize:mean=0.485,0.456,0.406;std=0.229,0.224,0.225";
output steps, from the model out: "softmax[:axis=-1]", "argmax[:axis=-1;keepdims=0]". Each takes
input=NAME (or output=NAME) to pick the graph input/output it acts on (default: the first)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from tm2onnx.errors import TransformError

from .dtypes import as_dtype
from .graphops import toposort
from .patterns import contiguous, name_maker, replace_uses


@dataclass
class Builder:
    """What a step's build function uses to add its nodes, named `<step>/<op>`."""

    graph: gs.Graph
    fresh: Callable[[str], str]
    step: str

    def node(self, op: str, inputs: list[gs.Tensor], outputs: list[gs.Tensor], **attrs) -> None:
        self.graph.nodes.append(gs.Node(op, self.fresh(f"{self.step}/{op}"), attrs, inputs,
                                        outputs))

    def const(self, name: str, array: np.ndarray) -> gs.Constant:
        return gs.Constant(self.fresh(f"{self.step}/{name}"), contiguous(array))

    def var(self, name: str, like: gs.Tensor) -> gs.Variable:
        return gs.Variable(self.fresh(f"{self.step}/{name}"), dtype=like.dtype, shape=like.shape)


# build(src, dst, options, builder) adds the nodes computing dst from src. Input steps may
# change src (the graph input) and output steps dst (the graph output); the other side keeps
# the dtype and shape the model has there.
BuildFn = Callable[[gs.Variable, gs.Variable, dict, Builder], None]


@dataclass(frozen=True)
class Step:
    side: str  # "input" or "output"; also the option naming which tensor it acts on
    build: BuildFn
    options: dict[str, Callable[[str], object]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    positional: str | None = None  # the option a bare value sets: "scale:0.5"


@dataclass(frozen=True)
class StepSpec:
    text: str
    name: str
    step: Step
    options: dict[str, object]


STEPS: dict[str, Step] = {}


def step(name: str, side: str, **spec) -> Callable[[BuildFn], BuildFn]:
    """Register a built-in step under `name` (the string users write)."""
    def register(build: BuildFn) -> BuildFn:
        STEPS[name] = Step(side, build, **spec)
        return build
    return register


def parse_steps(steps: tuple[str, ...] | str) -> list[StepSpec]:
    """Specs checked and their option values converted; a string holds space-separated steps."""
    return [parse_step(text) for text in (steps.split() if isinstance(steps, str) else steps)]


def parse_step(text: str) -> StepSpec:
    name, _, rest = text.strip().partition(":")
    if name not in STEPS:
        raise TransformError(f"unknown step {name!r}", hint=f"known: {', '.join(sorted(STEPS))}")
    spec, raw = STEPS[name], {}
    for part in filter(None, (p.strip() for p in rest.split(";"))):
        key, eq, value = part.partition("=")
        if not eq:
            if spec.positional is None or spec.positional in raw:
                raise TransformError(f"step {text!r}: expected key=value, got {part!r}")
            key, value = spec.positional, part
        raw[key.strip()] = value.strip()
    converters = {**spec.options, spec.side: str}
    if unknown := sorted(set(raw) - set(converters)):
        raise TransformError(f"step {text!r}: unknown option(s) {', '.join(unknown)}",
                             hint=f"{name} takes: {', '.join(sorted(converters))}")
    if missing := [key for key in spec.required if key not in raw]:
        raise TransformError(f"step {text!r} needs {', '.join(missing)}")
    try:
        options = {key: converters[key](value) for key, value in raw.items()}
    except (ValueError, ZeroDivisionError) as err:
        raise TransformError(f"step {text!r}: {err}") from err
    return StepSpec(text, name, spec, options)


def apply_steps(graph: gs.Graph, specs: list[StepSpec]) -> list[str]:
    """Wrap graph inputs (last listed innermost) and then outputs; returns the specs applied."""
    fresh = name_maker(graph)
    inputs = [spec for spec in specs if spec.step.side == "input"]
    for spec in reversed(inputs):
        outer = _pick(graph.inputs, spec)
        inner = gs.Variable(fresh(f"{outer.name}/{spec.name}"), outer.dtype, outer.shape)
        replace_uses(outer, inner, graph)
        spec.step.build(outer, inner, spec.options, Builder(graph, fresh, spec.name))
    for spec in specs:
        if spec.step.side == "output":
            outer = _pick(graph.outputs, spec)
            if len(outer.inputs) != 1:
                raise TransformError(f"step {spec.text!r}: output {outer.name!r} has no "
                                     "producing node")
            inner = gs.Variable(fresh(f"{outer.name}/before_{spec.name}"), outer.dtype,
                                outer.shape)
            node = outer.inputs[0]
            node.outputs[next(i for i, t in enumerate(node.outputs) if t is outer)] = inner
            replace_uses(outer, inner)
            spec.step.build(inner, outer, spec.options, Builder(graph, fresh, spec.name))
    toposort(graph)
    return [spec.text for spec in specs]


def _pick(tensors: list[gs.Tensor], spec: StepSpec) -> gs.Tensor:
    name = spec.options.get(spec.step.side)
    found = [t for t in tensors if name is None or t.name == name][:1]
    if not found:
        names = ", ".join(repr(t.name) for t in tensors)
        raise TransformError(f"step {spec.text!r}: no graph {spec.step.side} {name or ''}",
                             hint=f"graph {spec.step.side}s: {names or 'none'}")
    return found[0]


def number(text: str) -> float:
    """A float, also written as a fraction ("1/255")."""
    top, slash, bottom = text.partition("/")
    return float(top) / float(bottom) if slash else float(text)


def numbers(text: str) -> tuple[float, ...]:
    return tuple(number(item) for item in text.split(","))


def flag(text: str) -> bool:
    if text.lower() not in ("0", "1", "true", "false"):
        raise ValueError(f"{text!r} is not 0/1/true/false")
    return text.lower() in ("1", "true")


def _float_type(tensor: gs.Tensor, what: str) -> np.dtype:
    dtype = as_dtype(tensor.dtype)
    if dtype is None or not np.issubdtype(dtype, np.floating):
        raise TransformError(f"{what}: {tensor.name!r} is {dtype}, not floating point",
                             hint="list steps from the raw input to the model, 'uint8' first")
    return dtype


def _shape(tensor: gs.Tensor, what: str, rank: int | None = None) -> list:
    if tensor.shape is None or (rank is not None and len(tensor.shape) != rank):
        have = "unknown" if tensor.shape is None else f"rank {len(tensor.shape)}"
        need = f"rank {rank}" if rank else "a known rank"
        raise TransformError(f"{what}: {tensor.name!r} needs {need}, has {have}")
    return list(tensor.shape)


def _axis(axis: int, rank: int, what: str) -> int:
    if not -rank <= axis < rank:
        raise TransformError(f"{what}: axis {axis} out of range for rank {rank}")
    return axis % rank


@step("uint8", "input")
def _uint8(src: gs.Variable, dst: gs.Variable, options: dict, b: Builder) -> None:
    dtype = _float_type(src, "uint8")
    src.dtype = np.dtype(np.uint8)
    b.node("Cast", [src], [dst], to=onnx.helper.np_dtype_to_tensor_dtype(dtype))


@step("nhwc", "input")
def _nhwc(src: gs.Variable, dst: gs.Variable, options: dict, b: Builder) -> None:
    n, c, h, w = _shape(src, "nhwc", rank=4)
    src.shape = [n, h, w, c]
    b.node("Transpose", [src], [dst], perm=[0, 3, 1, 2])


@step("scale", "input", options={"value": number}, required=("value",), positional="value")
def _scale(src: gs.Variable, dst: gs.Variable, options: dict, b: Builder) -> None:
    factor = np.array(options["value"], _float_type(src, "scale"))
    b.node("Mul", [src, b.const("factor", factor)], [dst])


@step("normalize", "input", options={"mean": numbers, "std": numbers, "axis": int},
      required=("mean", "std"))
def _normalize(src: gs.Variable, dst: gs.Variable, options: dict, b: Builder) -> None:
    """(x - mean) / std per channel on `axis` (default 1: NCHW)."""
    dtype, shape = _float_type(src, "normalize"), _shape(src, "normalize")
    mean, std = options["mean"], options["std"]
    axis = _axis(options.get("axis", 1), len(shape), "normalize")
    if len(mean) != len(std) or 0.0 in std:
        raise TransformError(f"normalize: {len(mean)} means and {len(std)} stds (none zero) "
                             "are needed, one per channel")
    if isinstance(shape[axis], int) and len(mean) not in (1, shape[axis]):
        raise TransformError(f"normalize: {len(mean)} means for axis {axis} of size "
                             f"{shape[axis]} in {src.name!r} {shape}")
    view = [len(mean) if i == axis else 1 for i in range(len(shape))]
    centered = b.var("centered", like=dst)
    b.node("Sub", [src, b.const("mean", np.reshape(mean, view).astype(dtype))], [centered])
    b.node("Div", [centered, b.const("std", np.reshape(std, view).astype(dtype))], [dst])


@step("softmax", "output", options={"axis": int})
def _softmax(src: gs.Variable, dst: gs.Variable, options: dict, b: Builder) -> None:
    _float_type(src, "softmax")
    axis = options.get("axis", -1)
    # Before opset 13 Softmax flattens everything from `axis` on: per-axis only when it is last.
    if b.graph.opset < 13 and axis != -1 and axis != len(_shape(src, "softmax")) - 1:
        raise TransformError(f"softmax: axis {axis} is not the last axis, which opset "
                             f"{b.graph.opset} Softmax needs", hint="export at opset >= 13")
    b.node("Softmax", [src], [dst], axis=axis)


@step("argmax", "output", options={"axis": int, "keepdims": flag})
def _argmax(src: gs.Variable, dst: gs.Variable, options: dict, b: Builder) -> None:
    axis, keep = options.get("axis", -1), options.get("keepdims", False)
    dst.dtype = np.dtype(np.int64)
    if src.shape is not None:
        shape, at = list(src.shape), _axis(axis, len(src.shape), "argmax")
        dst.shape = shape[:at] + [1] * keep + shape[at + 1:]
    b.node("ArgMax", [src], [dst], axis=axis, keepdims=int(keep))
