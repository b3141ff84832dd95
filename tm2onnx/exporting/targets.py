"""Export targets (`--target`): what each toolchain changes in the exported graph, and a small
registry of rules each target's final graph must pass, so a file a toolchain cannot run is
refused with one line instead of written. `generic` (the default) is the portable form."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import onnx

from ..errors import Tm2OnnxError

Types = dict[str, onnx.TypeProto]
Rule = Callable[[onnx.ModelProto, Types], list[str]]  # the problems found, [] when it passes
DEFAULT_TARGET = "generic"
MAX_SHOWN = 3

RULES: dict[str, tuple[Rule, str]] = {}


def rule(name: str, hint: str) -> Callable[[Rule], Rule]:
    """Register a check on the final graph under `name`; `hint` says what to do instead."""
    def register(fn: Rule) -> Rule:
        if name in RULES:
            raise ValueError(f"target rule {name!r} is already registered")
        RULES[name] = (fn, hint)
        return fn
    return register


@dataclass(frozen=True)
class Target:
    name: str
    changes: str                    # what this target changes against `generic` (docs/targets.md table)
    rules: tuple[str, ...] = ()     # RULES every export for it must pass
    integer_relu_clip: bool = False  # ReLU after QuantizeLinear as an integer Clip (ORT fuses it)
    rewrites: tuple[str, ...] = ()  # transforms every export for it runs (each proves its match)


TARGETS: dict[str, Target] = {target.name: target for target in (
    Target("generic", "the portable patterns every toolchain runs: ReLU before QuantizeLinear "
           "as a float Clip, no float64, rank <= 4 where a 4-D form keeps the batch, slice "
           "writes as Slice + Concat"),
    Target("onnxruntime", "ReLU after quantization as an integer Clip between QuantizeLinear "
           "and DequantizeLinear, so onnxruntime fuses Conv -> Q into its int8 kernels",
           integer_relu_clip=True),
    Target("openvino", "the generic patterns"),
    Target("tensorrt", "the generic patterns (TensorRT has no float64)",
           rules=("no-float64",)),
    Target("tflite", "the generic patterns (TFLite has no float64; onnx2tf lowers an integer "
           "Clip on quantized values wrongly)", rules=("no-float64", "no-integer-clip")),
    Target("ncnn", "the generic patterns, and F.repeat along H/W as a nearest Resize (ncnn is "
           "float32, has no batch axis, at most 4-D blobs, no scatter; pnnx lowers no Tile)",
           rules=("no-float64", "max-rank-4", "no-scatter"), rewrites=("repeat-as-resize",)),
)}


def get_target(name: str, source: str | None = None) -> Target:
    if name not in TARGETS:
        raise Tm2OnnxError(f"target {name!r} is not known", where=source,
                           hint=f"choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


def check_target(model: onnx.ModelProto, types: Types, target: Target,
                 source: str | None = None) -> None:
    """Raise naming the first failing rule, its first offending tensors/nodes and the fix."""
    for name in target.rules:
        fn, hint = RULES[name]
        problems = fn(model, types)
        if problems:
            more = f" (and {len(problems) - MAX_SHOWN} more)" if len(problems) > MAX_SHOWN else ""
            raise Tm2OnnxError(f"--target {target.name} cannot run this model ({name}): "
                               f"{'; '.join(problems[:MAX_SHOWN])}{more}", where=source,
                               hint=hint)


def table() -> str:
    """The docs/targets.md and --help table: one row per target."""
    rows = ["| target | what changes | refused |", "|---|---|---|"]
    rows += [f"| `{t.name}` | {t.changes} | {', '.join(t.rules) or '-'} |"
             for t in TARGETS.values()]
    return "\n".join(rows)


def _elem(value: onnx.TypeProto) -> int:
    return value.tensor_type.elem_type if value.HasField("tensor_type") else 0


@rule("no-float64", "MegEngine computed this model in float64; cast it to float32 before "
      "tracing, or export with --target generic for a toolchain that has float64")
def no_float64(model: onnx.ModelProto, types: Types) -> list[str]:
    double = onnx.TensorProto.DOUBLE
    names = [name for name, value in types.items() if _elem(value) == double]
    return [f"{name} is float64" for name in names]


@rule("max-rank-4", "reshape the model's 5-D tensors to 4-D (keep the batch as axis 0) before "
      "tracing, or choose a target that runs them")
def max_rank_4(model: onnx.ModelProto, types: Types) -> list[str]:
    return [f"{name} has rank {len(value.tensor_type.shape.dim)}"
            for name, value in types.items()
            if value.HasField("tensor_type") and value.tensor_type.HasField("shape")
            and len(value.tensor_type.shape.dim) > 4]


@rule("no-scatter", "write slices known at export time (x[:, :2] = v), or keep the scatter "
      "out of the exported graph")
def no_scatter(model: onnx.ModelProto, types: Types) -> list[str]:
    scatters = ("ScatterND", "ScatterElements", "Scatter")
    return [f"{node.op_type} {node.name or node.output[0]}" for node in model.graph.node
            if node.op_type in scatters]


@rule("no-integer-clip", "export with --target generic (ReLU as a float Clip before "
      "QuantizeLinear)")  # a Clip reading QuantizeLinear: what onnx2tf lowers wrongly
def no_integer_clip(model: onnx.ModelProto, types: Types) -> list[str]:
    quantized = {out for node in model.graph.node if node.op_type == "QuantizeLinear"
                 for out in node.output}
    return [f"Clip {node.name or node.output[0]} on an 8-bit integer" for node in model.graph.node
            if node.op_type == "Clip" and node.input and node.input[0] in quantized]


def targets_help() -> str:
    """The table as `--help` text: one `name: changes [refuses ...]` entry per target."""
    return " ".join(f"{t.name}{' (default)' if t.name == DEFAULT_TARGET else ''}: {t.changes}"
                    f"{'; refuses ' + ', '.join(t.rules) if t.rules else ''}."
                    for t in TARGETS.values())
