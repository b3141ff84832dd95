"""Shapes of each call, not of the module: MegEngine keeps one graph per call signature of a
submodule, with the node shapes of its *first* call. When a later call (an FPN head on the next
pyramid level) has other input shapes, the walker re-runs the graph's exprs on stand-in values
of this call's shapes and sets every node's shape/dtype for the duration of the call.

The graph also holds the first call's *exprs*: a loop over `x.shape[2]` recorded at 2 levels runs
twice on 3 (trace_module replays it, and only checks the net's final outputs). A call's outputs
then have the replayed shape, not the one traced eagerly: the caller's nodes take it, and every
expr reading them is re-run too, until the walk ends (see `stale`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from megengine.traced_module.expr import Constant, GetAttr, Input
from megengine.traced_module.node import ModuleNode, TensorNode

from ..errors import ConversionError

Saved = tuple[Any, Any, Any]  # (node, traced shape, traced dtype)


class CallShapes:
    """A stack of frames, one per inlined call being re-shaped; each frame remembers the traced
    shape/dtype of every node it changed so leaving the call restores the user's graph."""

    def __init__(self, ctx: Any, modules: dict[Any, tuple[Any, str]]):
        self.ctx = ctx
        self.modules = modules
        self.frames: list[list[Saved]] = []
        # caller nodes outside any frame whose replayed shape is not the traced one: restored
        # by `restore` when the walk ends
        self.stale: list[Saved] = []
        self.values: dict[Any, Any] = {}  # stand-in MegEngine tensors (frames, stale nodes)

    @property
    def active(self) -> bool:
        return bool(self.frames)

    @contextmanager
    def call(self, call: Any, graph: Any) -> Iterator[None]:
        """Open a frame when the call's inputs differ from the traced ones (inside an open
        frame every nested call gets one, as its stand-in values must flow on)."""
        pairs = list(zip(call.inputs[1:], graph.inputs[1:]))
        if not self.frames and all(_same(outer, inner) for outer, inner in pairs):
            yield
            return
        frame: list[Saved] = []
        self.frames.append(frame)
        try:
            for outer, inner in pairs:
                self._set(inner, outer.shape, outer.dtype, self._value(outer))
            yield
            self.frames.pop()
            for outer, inner in zip(call.outputs, graph.outputs):
                # inside a frame the caller's nodes are re-shaped anyway; outside, only where
                # MegEngine's replay of the graph differs from what was traced eagerly
                if self.frames or not _same(outer, inner):
                    self._warn_replay(call, outer, inner)
                    self._set(outer, inner.shape, inner.dtype, self.values.get(inner))
        finally:
            if self.frames and self.frames[-1] is frame:
                self.frames.pop()
            for node, shape, dtype in reversed(frame):
                node.shape, node.dtype = shape, dtype
                self.values.pop(node, None)

    def restore(self) -> None:
        """Give the caller nodes re-shaped outside any frame their traced shapes back."""
        for node, shape, dtype in reversed(self.stale):
            node.shape, node.dtype = shape, dtype
            self.values.pop(node, None)
        self.stale.clear()

    def rerun(self, expr: Any) -> None:
        """Give the expr's output nodes this call's shapes by running it on stand-in values:
        inside a frame, or where an input was re-shaped after a replayed call."""
        if isinstance(expr, (Input, GetAttr, Constant)):
            return
        if not self.frames and not any(node in self.values for node in expr.inputs):
            return
        try:
            inputs = [self.modules[node][0] if isinstance(node, ModuleNode)
                      else self._value(node) for node in expr.inputs]
            results = expr.interpret(*inputs)
        except Exception as err:
            raise ConversionError(
                f"%{expr._id} {expr}: module '{self.ctx.module_path}' is called with other "
                f"shapes than when traced, and MegEngine cannot re-run this expr to get this "
                f"call's shapes: {type(err).__name__}: {err}", where=self.ctx.source,
                hint="call the module on inputs of one shape, or give each call its own "
                     "module") from err
        for node, value in zip(expr.outputs, results or ()):
            if isinstance(node, TensorNode) and hasattr(value, "shape"):
                self._set(node, tuple(value.shape), np.dtype(value.dtype), value)

    def _set(self, node: Any, shape: Any, dtype: Any, value: Any) -> None:
        (self.frames[-1] if self.frames else self.stale).append((node, node.shape, node.dtype))
        node.shape, node.dtype = shape, dtype
        if value is not None:
            self.values[node] = value

    def _value(self, node: Any) -> Any:
        """The node's stand-in: its re-run value, its export-time value, else zeros (shapes
        that depend on data are symbolic on the ONNX side anyway)."""
        import megengine as mge

        if node in self.values:
            return self.values[node]
        if self.ctx.is_known(node):
            return mge.Tensor(self.ctx.known(node), dtype=node.dtype)
        return mge.Tensor(np.zeros(node.shape, dtype=np.dtype(node.dtype)))

    def _warn_replay(self, call: Any, outer: Any, inner: Any) -> None:
        """Outside a frame the caller's node was traced eagerly: a different replayed shape
        means the TracedModule (and so the export) computes another value than the traced
        Python code did at this call."""
        if self.frames or not isinstance(outer, TensorNode):
            return
        warnings.warn(
            f"{self.ctx.source}: %{call._id} {outer.name}: the TracedModule replays the exprs "
            f"MegEngine recorded at the module's first call, giving shape {list(inner.shape)}; "
            f"the traced Python code gave {list(outer.shape)} (a loop whose count differs per "
            "call?). Exported as the TracedModule computes; give each call its own module "
            "to keep the Python code's result", stacklevel=2)


def _same(outer: Any, inner: Any) -> bool:
    if not isinstance(outer, TensorNode):
        return True
    return tuple(outer.shape or ()) == tuple(inner.shape or ()) and outer.dtype == inner.dtype
