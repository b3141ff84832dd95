"""Run a TracedModule on the same numpy feeds as onnxruntime, to get reference outputs; and
interpret it expr by expr (nested TracedModules inlined, as the exporter does) keeping every
tensor's value under the name the exporter gives its ONNX tensor, for localization."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tm2onnx._quiet import _is_banner
from tm2onnx.errors import RunError


@contextlib.contextmanager
def _one_line_failures() -> Iterator[None]:
    """MegEngine writes a C++ backtrace to fd 2 before raising: hold fd 2's output, drop it when
    the run fails (the RunError says what failed, in one line), replay it (less the CUDA
    banner) when the run works."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not failed:
                capture.seek(0)
                kept = [line for line in capture.read().decode(errors="replace").splitlines()
                        if line.strip() and not _is_banner(line)]
                if kept:
                    sys.stderr.write("\n".join(kept) + "\n")


@contextlib.contextmanager
def synchronous() -> Iterator[None]:
    """MegEngine 1.13's default asynchronous CPU dispatch was seen computing wrong eager
    values (a detector's per-level anchor grid took another level's offset, differently from
    run to run); references, folds and re-runs must be exact, so run synchronously."""
    import megengine

    saved = megengine.config.async_level
    megengine.config.async_level = 0
    try:
        yield
    finally:
        megengine.config.async_level = saved


def run_traced(traced: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Outputs of `traced(*inputs)` as numpy arrays, in the traced graph's output order."""
    import megengine as mge

    traced.eval()
    try:
        with synchronous(), _one_line_failures():
            result = traced(*[mge.Tensor(np.asarray(x)) for x in inputs])
            if not isinstance(result, (tuple, list)):
                result = (result,)
            return [to_numpy(value) for value in _flatten(result)]
    except Exception as err:  # MegEngine raises plain RuntimeError/AssertionError/...
        raise RunError(f"MegEngine failed to run the model: {type(err).__name__}: "
                       f"{' '.join(str(err).split())[:300]}") from err


@dataclass(frozen=True)
class TracedTensor:
    """Where a value came from on the MegEngine side."""
    name: str      # the ONNX tensor name the exporter gives it
    module: str    # module path of the call, '' for functions and methods
    qualname: str
    expr: str


# Teacher forcing: called with (ONNX name, MegEngine value) for each recorded tensor; a value
# it returns replaces MegEngine's for the rest of the run.
Replace = Callable[[str, Any, Sequence[Any]], Any]  # (name, value, the expr's input values)


class Interpreter:
    """One interpreted run: `values`/`origins` by name, `aliases` (a tensor's first name ->
    the names it takes as it leaves nested modules), `outputs` in graph order."""

    def __init__(self, traced: Any, replace: Replace | None = None):
        self.replace = replace
        self.values: dict[str, np.ndarray] = {}
        self.origins: dict[str, TracedTensor] = {}
        self.aliases: dict[str, list[str]] = {}
        self.outputs: list[np.ndarray] = []
        self._first: dict[int, str] = {}  # id of a value object -> its first name
        self.env: dict[Any, Any] = {}
        self.paths: dict[Any, str] = {}
        self.root = traced

    def run(self, graph: Any, module: Any, path: str, prefix: str) -> None:
        from megengine.traced_module.expr import CallMethod, Input
        from megengine.traced_module.node import ModuleNode

        self.env[graph.inputs[0]], self.paths[graph.inputs[0]] = module, path
        for expr in graph.exprs(recursive=False):
            if isinstance(expr, Input):
                continue
            callee = expr.inputs[0] if expr.inputs else None
            if isinstance(expr, CallMethod) and isinstance(callee, ModuleNode) and hasattr(
                    self.env[callee], "argdef_graph_map"):
                self._inline(expr, prefix)
                continue
            values = expr.interpret(*[self.env[node] for node in expr.inputs]) or ()
            for node, value in zip(expr.outputs, values):
                self.env[node] = value
                if isinstance(node, ModuleNode):
                    self.paths[node] = _child_path(self.paths.get(callee, ""), expr)
                else:
                    self._record(prefix + node.name, node, value, expr)

    def _inline(self, call: Any, prefix: str) -> None:
        module_node = call.inputs[0]
        module = self.env[module_node]
        graph = module.argdef_graph_map[call.arg_def]
        for outer, inner in zip(call.inputs[1:], graph.inputs[1:]):
            self.env[inner] = self.env[outer]
        self.run(graph, module, self.paths.get(module_node, ""),
                 f"{prefix}{module_node.name}_")
        for outer, inner in zip(call.outputs, graph.outputs):
            value = self.env[outer] = self.env[inner]
            self._record(prefix + outer.name, outer, value, call)
            if prefix and (first := self._first.get(id(value))) is not None:
                # the exporter names an inlined module's output by the caller's node name,
                # without the caller's prefix (ExportContext.adopt_name)
                self.aliases.setdefault(first, []).append(outer.name)

    def _record(self, name: str, node: Any, value: Any, expr: Any) -> None:
        if name in self.values or not hasattr(value, "numpy"):
            return  # the exporter renames a repeated name: leave such tensors unmatched
        first = self._first.setdefault(id(value), name)
        if first != name:
            self.aliases.setdefault(first, []).append(name)
        self.values[name] = to_numpy(value)
        module = self.paths.get(expr.inputs[0], "") if expr.inputs else ""
        text = repr(expr).split("\t", 1)[-1]
        self.origins[name] = TracedTensor(name, module, node.qualname, text[:200])
        if self.replace is not None:
            inputs = [self.env[n] for n in expr.inputs if n in self.env and hasattr(
                self.env[n], "numpy")]
            if (forced := self.replace(name, value, inputs)) is not None:
                self.env[node] = forced


def _child_path(parent: str, expr: Any) -> str:
    name = getattr(expr, "name", None) or ""
    return f"{parent}.{name}" if parent and name else name or parent


def run_traced_all(traced: Any, inputs: Sequence[np.ndarray], *, replace: Replace | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, TracedTensor], list[np.ndarray]]:
    """One interpreted run: every tensor's value and origin, keyed by ONNX tensor name, and
    the graph outputs in order. `replace` forces values (the values kept are MegEngine's own,
    computed from the forced inputs)."""
    run = interpret(traced, inputs, replace=replace)
    return run.values, run.origins, run.outputs


def interpret(traced: Any, inputs: Sequence[np.ndarray], *, replace: Replace | None = None
              ) -> Interpreter:
    """`traced` run expr by expr on `inputs` (nested TracedModules inlined)."""
    import megengine as mge

    traced.eval()
    interpreter = Interpreter(traced, replace)
    for node, value in zip(traced.graph.inputs[1:], inputs):
        interpreter.env[node] = mge.Tensor(np.asarray(value))
        interpreter.values.setdefault(node.name, np.asarray(value))
    try:
        with synchronous(), _one_line_failures():
            interpreter.run(traced.graph, traced, "", "")
    except Exception as err:
        raise RunError(f"MegEngine failed to interpret the model: {type(err).__name__}: "
                       f"{' '.join(str(err).split())[:300]}") from err
    interpreter.outputs = [to_numpy(interpreter.env[node]) for node in traced.graph.outputs]
    return interpreter


def to_numpy(value: Any) -> np.ndarray:
    """A MegEngine tensor's real values: a quantized dtype (qint8, quint8, qint32) is
    dequantized, where `.numpy()` would give its stored integers."""
    from megengine.core.tensor.dtype import is_quantize

    if is_quantize(value.dtype):
        value = value.astype("float32")
    return np.asarray(value.numpy())


def _flatten(values: Any) -> list:
    flat = []
    for value in values:
        if isinstance(value, (tuple, list)):
            flat.extend(_flatten(value))
        elif isinstance(value, dict):
            flat.extend(_flatten(list(value.values())))
        else:
            flat.append(value)
    return flat
