"""Walk a TracedModule's exprs in order, inlining calls of nested TracedModules (what
`flatten()` does, without its deep copy of every weight): resolve module attributes, fold exprs
whose inputs are all known at export time (static shapes, constants), and dispatch the rest."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx_graphsurgeon as gs
from megengine.traced_module import TracedModule
from megengine.traced_module.expr import CallMethod, Constant, GetAttr, Input
from megengine.traced_module.node import ModuleNode, TensorNode

from ..errors import ConversionError, Tm2OnnxError
from ..runtime.megengine_ref import synchronous as synchronous_megengine
from .batchprobe import BatchProbe
from .callshapes import CallShapes
from .context import ExportContext
from .converters import describe_target, find_converter


class _Walk:
    def __init__(self, ctx: ExportContext, traced: Any):
        self.ctx = ctx
        self.modules: dict[Any, tuple[Any, str]] = {traced.graph.inputs[0]: (traced, "")}
        self.poisoned: set[Any] = set()
        self.unsupported: list[str] = []
        self.shapes = CallShapes(ctx, self.modules)
        self.probe = BatchProbe(ctx, self.modules) if ctx.dynamic_batch else None
        ctx.batch_probe = self.probe

    def run(self, graph: Any) -> list[str]:
        for expr in graph.exprs(recursive=False):
            if isinstance(expr, Input):
                continue
            if self._is_traced_call(expr):
                self._inline(expr)
                continue
            self.ctx.expr, self.ctx.module_path = expr, self._module_path(expr)
            self.shapes.rerun(expr)
            if self.probe is not None:
                self.probe.run(expr)
            self._convert(expr)
        return self.unsupported

    def _is_traced_call(self, expr: Any) -> bool:
        return (isinstance(expr, CallMethod) and isinstance(expr.inputs[0], ModuleNode)
                and isinstance(self.modules[expr.inputs[0]][0], TracedModule))

    def _inline(self, call: Any) -> None:
        """Walk the called module's graph with its inputs aliased to the caller's values; its
        outputs take the caller's names, as `flatten()` would name them. The graph is shared
        by every call with this signature: its node shapes are set to this call's meanwhile."""
        module_node = call.inputs[0]
        graph = self.modules[module_node][0].argdef_graph_map[call.arg_def]
        inner_inputs = graph.inputs
        self.modules[inner_inputs[0]] = self.modules[module_node]
        outer_prefix = self.ctx.name_prefix
        with self.shapes.call(call, graph):
            for outer, inner in zip(call.inputs[1:], inner_inputs[1:]):
                self._alias(inner, outer)
            self.ctx.name_prefix = f"{outer_prefix}{module_node.name}_"
            try:
                self.run(graph)
            finally:
                self.ctx.name_prefix = outer_prefix
        for outer, inner in zip(call.outputs, graph.outputs):
            self._alias(outer, inner)
            self.ctx.adopt_name(outer)
            self.ctx.expect(outer)  # the caller's node has this call's shape

    def _alias(self, target: Any, source: Any) -> None:
        if self.probe is not None:
            self.probe.alias(target, source)
        if source in self.poisoned:
            self.poisoned.add(target)
        if self.ctx.is_known(source):
            self.ctx.set_known(target, self.ctx.known(source))
        else:
            self.ctx.bind(target, self.ctx.value_of(source))

    def _convert(self, expr: Any) -> None:
        if isinstance(expr, GetAttr):
            return self._get_attr(expr)
        if isinstance(expr, Constant):
            return self._constant(expr)
        if any(node in self.poisoned for node in expr.inputs):
            return self._poison(expr, report=find_converter(expr) is None)
        if self._all_inputs_known(expr) and self._fold(expr):
            return None
        converter = find_converter(expr)
        if converter is None:
            return self._poison(expr, report=True)
        self._call(converter, expr)
        return None

    def _call(self, converter: Any, expr: Any) -> None:
        try:
            if isinstance(expr, CallMethod) and isinstance(expr.inputs[0], ModuleNode):
                converter(self.ctx, expr, self.modules[expr.inputs[0]][0])
            else:
                converter(self.ctx, expr)
        except Tm2OnnxError:
            raise
        except Exception as err:
            raise ConversionError(f"%{expr._id} {describe_target(expr)} failed: "
                                  f"{type(err).__name__}: {err}", where=self.ctx.source,
                                  hint="please report this with the model") from err
        missing = [node.name for node in expr.outputs if not self.ctx.is_bound(node)]
        if missing:
            raise ConversionError(f"%{expr._id} {describe_target(expr)} left {missing} unset",
                                  where=self.ctx.source, hint="converter bug; please report")

    def _get_attr(self, expr: GetAttr) -> None:
        parent, path = self.modules[expr.inputs[0]]
        value = expr.interpret(parent)[0]
        child_path = f"{path}.{expr.name}" if path else expr.name
        output = expr.outputs[0]
        if isinstance(output, ModuleNode):
            self.modules[output] = (value, child_path)
        else:
            self.ctx.set_known(output, _numpy(value))

    def _constant(self, expr: Constant) -> None:
        output = expr.outputs[0]
        if isinstance(output, ModuleNode):
            self.modules[output] = (expr.value, output.name)
        else:
            self.ctx.set_known(output, _numpy(expr.value))

    def _all_inputs_known(self, expr: Any) -> bool:
        tensors = [node for node in expr.inputs if isinstance(node, TensorNode)]
        return all(self.ctx.is_known(node) for node in tensors)

    def _fold(self, expr: Any) -> bool:
        """Evaluate with MegEngine itself; the result becomes an initializer if ever used."""
        import megengine as mge

        values = [self.modules[node][0] if isinstance(node, ModuleNode)
                  else mge.Tensor(self.ctx.known(node)) for node in expr.inputs]
        try:
            results = expr.interpret(*values)
        except Exception:  # noqa: BLE001 - not foldable; the converter handles it
            return False
        if results is None or len(results) != len(expr.outputs):
            return False
        for node, value in zip(expr.outputs, results):
            self.ctx.set_known(node, _numpy(value, like=node))
        return True

    def _poison(self, expr: Any, *, report: bool) -> None:
        if report:
            where = f" at {expr.outputs[0].qualname}" if expr.outputs else ""
            self.unsupported.append(f"%{expr._id} {describe_target(expr)}{where}")
        for node in expr.outputs:
            self.poisoned.add(node)
            self.ctx.bind(node, gs.Variable(f"unsupported_{expr._id}"))

    def _module_path(self, expr: Any) -> str:
        if isinstance(expr, CallMethod) and expr.inputs and isinstance(expr.inputs[0], ModuleNode):
            return self.modules[expr.inputs[0]][1]
        return ""


def convert_all(ctx: ExportContext, traced: Any) -> list[str]:
    """Convert every expr; return descriptions of those with no converter (empty when all ok)."""
    walk = _Walk(ctx, traced)
    with synchronous_megengine():
        if walk.probe is not None:
            walk.probe.start(traced.graph)
        try:
            return walk.run(traced.graph)
        finally:
            walk.shapes.restore()  # the user's graph keeps its traced shapes


def _numpy(value: Any, like: Any = None) -> np.ndarray:
    array = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
    dtype = getattr(like, "dtype", None)
    if dtype is not None and array.dtype != np.dtype(dtype):
        array = array.astype(dtype)
    return array
