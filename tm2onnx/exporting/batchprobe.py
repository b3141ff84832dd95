"""Where the batch is, with a dynamic batch: the walker runs every expr a second time in
MegEngine, on stand-in inputs one larger in axis 0, and an axis whose size differs there is
batch-dependent. That follows the batch through transposes, reshapes and any other op without a
rule per op (`qkv.reshape(B, N, 3, H, d).transpose(2, 0, 3, 1, 4)` has it on axis 1)."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from megengine.traced_module.expr import Constant, GetAttr, Input
from megengine.traced_module.node import ModuleNode, TensorNode


class BatchProbe:
    """Stand-in MegEngine values at the other batch size, one per TensorNode reached; a node
    without one (its expr failed there, or it is not batch-dependent at all) has none."""

    def __init__(self, ctx: Any, modules: dict[Any, tuple[Any, str]]):
        self.ctx = ctx
        self.modules = modules
        self.values: dict[Any, Any] = {}

    def start(self, graph: Any) -> None:
        """Zeros for the graph inputs, axis 0 one larger than traced."""
        import megengine as mge

        for node in graph.inputs[1:]:
            if not (isinstance(node, TensorNode) and node.shape):
                continue
            shape = (int(node.shape[0]) + 1, *node.shape[1:])
            # a dtype MegEngine cannot build a stand-in of leaves the input's axes unknown
            with contextlib.suppress(Exception):
                self.values[node] = mge.Tensor(np.zeros(shape, np.dtype(node.dtype)),
                                               dtype=node.dtype)

    def alias(self, target: Any, source: Any) -> None:
        if source in self.values:
            self.values[target] = self.values[source]
        else:
            self.values.pop(target, None)

    def run(self, expr: Any) -> None:
        """The expr's outputs at the other batch size; only exprs reading a probed value run
        (the others are the same at every batch). A shared submodule's nodes are reused by
        each call, so every output is set or cleared here."""
        outputs = [node for node in expr.outputs if isinstance(node, TensorNode)]
        for node in outputs:
            self.values.pop(node, None)
        if isinstance(expr, (Input, GetAttr, Constant)):
            return
        if not any(node in self.values for node in expr.inputs):
            return
        inputs = [self._value(node) for node in expr.inputs]
        if any(value is None for value in inputs):
            return
        try:
            results = expr.interpret(*inputs)
        except Exception:  # noqa: BLE001 - not runnable at another batch: axes unknown there
            return
        for node, value in zip(expr.outputs, results or ()):
            if isinstance(node, TensorNode) and hasattr(value, "shape"):
                self.values[node] = value

    def shape(self, node: Any) -> tuple[int, ...] | None:
        """The node's shape at the other batch size, None where unknown."""
        value = self.values.get(node)
        if value is not None:
            return tuple(int(d) for d in value.shape)
        if self.ctx.is_known(node):
            return tuple(self.ctx.known(node).shape)
        return None

    def _value(self, node: Any) -> Any:
        import megengine as mge

        if isinstance(node, ModuleNode):
            return self.modules[node][0]
        if node in self.values:
            return self.values[node]
        if self.ctx.is_known(node):
            return mge.Tensor(self.ctx.known(node), dtype=node.dtype)
        return None
