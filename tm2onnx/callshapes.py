"""Shapes of each call, not of the module: MegEngine keeps one graph per call signature of a
submodule, with the node shapes of its *first* call. When a later call (an FPN head on the next
pyramid level) has other input shapes, the walker re-runs the graph's exprs on stand-in values
of this call's shapes and sets every node's shape/dtype for the duration of the call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from megengine.traced_module.expr import Constant, GetAttr, Input
from megengine.traced_module.node import ModuleNode, TensorNode

from .errors import ConversionError

Saved = tuple[Any, Any, Any]  # (node, traced shape, traced dtype)


class CallShapes:
    """A stack of frames, one per inlined call being re-shaped; each frame remembers the traced
    shape/dtype of every node it changed so leaving the call restores the user's graph."""

    def __init__(self, ctx: Any, modules: dict[Any, tuple[Any, str]]):
        self.ctx = ctx
        self.modules = modules
        self.frames: list[list[Saved]] = []
        self.values: dict[Any, Any] = {}  # stand-in MegEngine tensors while a frame is open

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
            if self.frames:  # the caller's output nodes are themselves inside a frame
                for outer, inner in zip(call.outputs, graph.outputs):
                    self._set(outer, inner.shape, inner.dtype, self.values.get(inner))
        finally:
            if self.frames and self.frames[-1] is frame:
                self.frames.pop()
            for node, shape, dtype in reversed(frame):
                node.shape, node.dtype = shape, dtype
                self.values.pop(node, None)

    def rerun(self, expr: Any) -> None:
        """Give the expr's output nodes this call's shapes by running it on stand-in values."""
        if not self.frames or isinstance(expr, (Input, GetAttr, Constant)):
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
        self.frames[-1].append((node, node.shape, node.dtype))
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


def _same(outer: Any, inner: Any) -> bool:
    if not isinstance(outer, TensorNode):
        return True
    return tuple(outer.shape or ()) == tuple(inner.shape or ()) and outer.dtype == inner.dtype
