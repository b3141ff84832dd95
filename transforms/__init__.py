"""Graph transforms: each is `graph -> TransformReport`, registered by its CLI name with
`@transform(name)`; `run_pipeline` runs them in order on a model and reports every step."""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import inspect
import pkgutil
import time
from collections.abc import Callable, Iterator, Sequence

import onnx
import onnx_graphsurgeon as gs

from tm2onnx.errors import Tm2OnnxError, TransformBug, TransformError

from .graphio import to_graph, to_model
from .patterns import graph_size
from .report import TransformReport

TransformFn = Callable[..., TransformReport]
StepCallback = Callable[[str, onnx.ModelProto, onnx.ModelProto, TransformReport], None]

TRANSFORMS: dict[str, TransformFn] = {}
# What `deploy` expands to: the rewrites every deployment wants, in a safe order. Folding first:
# the Conv fusions need constant operands, and exporters compute some (Identity of a shared
# weight, a frozen BN's scale) that only folding makes constant. Projections merge after
# absorb-const, which folds a scale on one of them (attention's q * d**-0.5) into its weights.
DEPLOY_PIPELINE: tuple[str, ...] = ("fold-shapes", "fuse-conv-bn", "absorb-const",
                                    "merge-parallel-matmuls", "cleanup")
_NOT_TRANSFORMS = {"report", "patterns", "graphio", "graphops", "affine", "bn_neighbours",
                  "slices", "linear_rows", "reshape_targets", "gathers"}


def transform(name: str) -> Callable[[TransformFn], TransformFn]:
    """Register `fn(graph, *, params) -> TransformReport` under its CLI name (once only)."""
    def register(fn: TransformFn) -> TransformFn:
        if name in TRANSFORMS or name == "deploy":
            raise TransformError(f"transform {name!r} is already registered",
                                 where=f"{fn.__module__}.{fn.__qualname__}")
        TRANSFORMS[name] = fn
        fn.transform_name = name
        return fn
    return register


def describe() -> list[tuple[str, str]]:
    """(name, first docstring line) of every registered transform, sorted by name."""
    def first_line(fn: TransformFn) -> str:
        doc = inspect.getdoc(fn) or ""
        return " ".join(doc.split("\n\n")[0].split())
    return [(name, first_line(TRANSFORMS[name])) for name in sorted(TRANSFORMS)]


def expand(names: Sequence[str]) -> list[str]:
    """Names with `deploy` expanded; unknown names raise, listing the known ones."""
    expanded: list[str] = []
    for name in names:
        expanded += DEPLOY_PIPELINE if name == "deploy" else [name]
    unknown = [n for n in expanded if n not in TRANSFORMS]
    if unknown:
        raise TransformError(f"unknown transform(s): {', '.join(unknown)}",
                             hint=f"known: deploy, {', '.join(sorted(TRANSFORMS))}")
    return expanded


def bind(name: str, params: dict | None = None) -> Callable[[gs.Graph], TransformReport]:
    """The transform with its keyword-only params bound; an unknown param names the known ones."""
    if name not in TRANSFORMS:
        expand([name])  # raises, listing the known names
    fn = TRANSFORMS[name]
    params = params or {}
    accepted = {p.name for p in inspect.signature(fn).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    extra = sorted(set(params) - accepted)
    if extra:
        raise TransformError(f"{name} has no option(s) {', '.join(extra)}",
                             hint=f"it takes: {', '.join(sorted(accepted)) or 'no options'}")
    return functools.partial(fn, **params)


def run_transform(graph: gs.Graph, name: str, **params: object) -> TransformReport:
    """Run one transform on `graph` in place and return its report with stats filled in."""
    return _run_step(graph, name, bind(name, params))


def _run_step(graph: gs.Graph, name: str, fn: Callable[[gs.Graph], TransformReport],
              before: tuple[int, int, int] | None = None) -> TransformReport:
    # `before` is the previous step's `after`, so a pipeline measures the graph once per step.
    nodes, params, size = before or graph_size(graph)
    start = time.perf_counter()
    report = fn(graph)
    if not isinstance(report, TransformReport):
        raise TransformError(f"{name} returned {type(report).__name__}, not a TransformReport")
    report.seconds = time.perf_counter() - start
    report.nodes_before, report.params_before, report.bytes_before = nodes, params, size
    # A step that reports no change left the graph as it was (run_pipeline relies on that too).
    after = graph_size(graph) if report.changed else (nodes, params, size)
    report.nodes_after, report.params_after, report.bytes_after = after
    return report


def run_pipeline(model: onnx.ModelProto, names: Sequence[str], *,
                 options: dict[str, dict] | None = None, check: bool = False,
                 on_step: StepCallback | None = None
                 ) -> tuple[onnx.ModelProto, list[TransformReport]]:
    """Run `names` in order on one gs import of `model` (which is not modified).

    `options[name]` binds that transform's keyword-only params. With `check`, onnx.checker runs
    after each changing step; `on_step(name, before, after, report)` sees each step's models
    (exported only when asked for). When no step changed anything the input model comes back
    as is, byte for byte."""
    options = options or {}
    steps = [(name, bind(name, options.get(name))) for name in expand(names)]
    with _gc_paused(), _names_kept(model):
        return _run_steps(model, steps, check, on_step)


@contextlib.contextmanager
def _names_kept(model: onnx.ModelProto) -> Iterator[None]:
    # gs imports constants lazily and, on export, writes the new tensor name into the
    # caller's TensorProto itself (initializers, Constant node values): put the names back.
    tensors = list(_tensor_protos(model.graph))
    names = [tensor.name if tensor.HasField("name") else None for tensor in tensors]
    try:
        yield
    finally:
        for tensor, name in zip(tensors, names):
            if name is None:
                tensor.ClearField("name")
            elif tensor.name != name:
                tensor.name = name


def _tensor_protos(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensor_protos(sub)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # A gs graph is millions of small container objects, all alive until the pipeline ends, so
    # the cyclic collector's full passes find nothing to free, yet each walks the whole heap:
    # with it on, a 100k-node import costs 1.5-2.5x as much and grows faster than linearly.
    # The switch is process-wide; it is restored on the way out, errors included, and what the
    # pipeline leaves behind goes in the first collection after that.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _run_steps(model: onnx.ModelProto,
               steps: list[tuple[str, Callable[[gs.Graph], TransformReport]]], check: bool,
               on_step: StepCallback | None) -> tuple[onnx.ModelProto, list[TransformReport]]:
    graph = to_graph(model)
    current, reports = model, []
    for name, fn in steps:
        try:
            before = (reports[-1].nodes_after, reports[-1].params_after,
                      reports[-1].bytes_after) if reports else None
            report = _run_step(graph, name, fn, before)
            after = current
            if report.changed and (check or on_step is not None):
                after = to_model(graph, like=model)
                if check:
                    onnx.checker.check_model(after)
        except Exception as err:
            raise _failure(name, reports, err) from err
        if on_step is not None:
            on_step(name, current, after, report)
        current = after
        reports.append(report)
    if not any(r.changed for r in reports):
        return model, reports
    if not check and on_step is None:  # otherwise `current` is already the final export
        current = to_model(graph, like=model)
    return current, reports


def _failure(name: str, reports: list[TransformReport], err: Exception) -> Tm2OnnxError:
    """A refusal (a Tm2OnnxError the transform raised on purpose) stays a TransformError; any
    other exception is a bug: a TransformBug naming its type, the original as __cause__."""
    ran = f"after [{', '.join(r.name for r in reports)}]" if reports else "(first step)"
    if isinstance(err, Tm2OnnxError):
        return TransformError(f"{name} failed {ran}: {err}")
    return TransformBug(f"{name} failed {ran}: {err}",
                        hint=f"{name} crashed ({type(err).__name__}) rather than refused: a "
                             "tm2onnx bug; please report it with the model")


def _load_builtin_transforms() -> None:
    # Every module in this package except the core registers its transforms on import, so a
    # new transforms/<name>.py needs no edit here.
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name not in _NOT_TRANSFORMS and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_load_builtin_transforms()

from .dataflow import ProducerInfo, producers  # after the registry: dataflow registers `where`

__all__ = ["DEPLOY_PIPELINE", "TRANSFORMS", "ProducerInfo", "TransformReport", "describe",
           "expand", "producers", "run_pipeline", "run_transform", "to_graph", "to_model",
           "transform"]
