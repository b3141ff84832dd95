"""ExportContext: the gs.Graph being built, the map from TracedModule nodes to ONNX tensors,
compile-time known values (static shapes, constants), unique names and provenance."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import ConversionError
from ..transforms.patterns import NameMaker

SHAPE_DTYPE = np.int64
BATCH_DIM = "batch"  # the graph inputs' axis 0 with dynamic_batch (exporter.BATCH_DIM)
QDQ_ACTIVATIONS = ("uint8", "int8")  # storage of quantized activations (docs/quantization.md)
QDQ_WEIGHTS = ("int8", "uint8")      # storage of 8-bit weights (uint8: exact on x86 w/o VNNI)


class ExportContext:
    """Converters emit only through this object: `emit`, `op`, `const`, `arg`, `value_of`."""

    def __init__(self, *, opset: int, dynamic_batch: bool, source: str):
        self.opset = opset
        self.dynamic_batch = dynamic_batch
        self.source = source
        self.graph = gs.Graph(opset=opset, name="tm2onnx")
        self.provenance: dict[str, dict[str, str]] = {}
        # (tensor, traced shape, traced dtype) for each tensor a TensorNode was bound to:
        # what guards.check_traced_shapes holds the ONNX shape inference to
        self.expected: list[tuple[gs.Tensor, Any, Any]] = []
        # (tensor, axes that change with the batch) for guards.check_batch_axes
        self.batch_dependent: list[tuple[gs.Tensor, frozenset[int]]] = []
        self.batch_probe: Any = None  # batchprobe.BatchProbe while walking with dynamic_batch
        self._values: dict[Any, gs.Tensor] = {}
        self._known: dict[Any, np.ndarray] = {}
        self._used_names: set[str] = set()
        self._node_names: set[str] = set()
        self._tensor_namer = NameMaker(self._used_names)
        self._node_namer = NameMaker(self._node_names)
        self._provenance_of: tuple[Any, dict[str, str]] = (None, {})  # for the current expr
        self._const_count = 0
        self._expr = None
        self.module_path = ""
        self.name_prefix = ""  # `conv_bn_` inside an inlined submodule `conv_bn`

    @property
    def expr(self) -> Any:
        """The expr being converted (None between exprs)."""
        return self._expr

    @expr.setter
    def expr(self, expr: Any) -> None:
        self._expr = expr
        self._provenance_of = (None, {})

    # ---- names -------------------------------------------------------------------------
    def unique(self, name: str, *, namespace: set[str] | None = None) -> str:
        """`name`, or `name_1`, `name_2`... : tensors and nodes have separate namespaces, each
        with the transforms' NameMaker (a counter per base: O(1) even when thousands of nodes
        share a base such as a module path or `""`)."""
        if namespace is None or namespace is self._used_names:
            return self._tensor_namer(name)
        if namespace is self._node_names:
            return self._node_namer(name)
        return NameMaker(namespace)(name)

    def node_name(self, name: str) -> str:
        return self.unique(name, namespace=self._node_names)

    def reserve(self, name: str) -> None:
        self._used_names.add(name)

    @property
    def base_name(self) -> str:
        """Module path for module calls, else the first output's name: what users see in Netron."""
        if self.module_path:
            return self.module_path
        if self.expr is not None and self.expr.outputs:
            return self.expr.outputs[0].name
        return "node"

    # ---- values ------------------------------------------------------------------------
    def is_known(self, node: Any) -> bool:
        return node in self._known

    def known(self, node: Any) -> np.ndarray:
        return self._known[node]

    def set_known(self, node: Any, value: Any) -> None:
        # a submodule's nodes are reused by each of its calls: forget the last call's tensor
        self._values.pop(node, None)
        self._known[node] = np.asarray(value)

    def bind(self, node: Any, tensor: gs.Tensor) -> None:
        self._known.pop(node, None)
        self._values[node] = tensor

    def is_bound(self, node: Any) -> bool:
        return node in self._values or node in self._known

    def has_runtime_shape(self, node: Any) -> bool:
        """True for values downstream of a data-dependent size (NonZero, NMS): their traced
        shape is one run's, so it is neither declared nor folded."""
        tensor = self._values.get(node)
        if not isinstance(tensor, gs.Variable):
            return False
        if tensor.shape is None:
            return not self.dynamic_batch
        return any(dim is None or (isinstance(dim, str) and dim != BATCH_DIM)
                   for dim in tensor.shape)

    def value_of(self, node: Any) -> gs.Tensor:
        """The ONNX tensor for a TensorNode; known values become initializers on first use."""
        if node in self._values:
            return self._values[node]
        if node in self._known:
            tensor = self.const(self._known[node], name=_const_name(node))
            self._values[node] = tensor
            return tensor
        raise ConversionError(f"tensor {node} is used before it is produced",
                              where=self.source, hint="this is a tm2onnx bug; please report it")

    def arg(self, value: Any, *, dtype: Any = None) -> gs.Tensor:
        """An ONNX tensor for a converter argument: a TensorNode, or a Python/numpy constant
        (cast to `dtype`, so `x * 2` on float16 stays float16)."""
        if _is_node(value):
            return self.value_of(value)
        return self.const(np.asarray(value, dtype=dtype))

    def const(self, array: Any, name: str | None = None) -> gs.Constant:
        array = np.asarray(array, order="C")  # ascontiguousarray would make 0-d arrays 1-d
        if name is None:
            self._const_count += 1
            name = f"{self.base_name}.const{self._const_count}"
        return gs.Constant(self.unique(name), array)

    def param(self, attribute: str, array: Any) -> gs.Constant:
        """An initializer named after the module attribute path, e.g. `conv_bn.0.weight`."""
        return self.const(_to_numpy(array), name=f"{self.module_path}.{attribute}")

    def shape_const(self, values: Iterable[int]) -> gs.Constant:
        return self.const(np.asarray(list(values), dtype=SHAPE_DTYPE))

    # ---- emitting nodes ----------------------------------------------------------------
    def emit(self, op: str, inputs: Sequence[Any], outputs: Sequence[Any], **attrs: Any
             ) -> list[gs.Variable]:
        """Add one node whose outputs are the given TensorNodes (bound by name)."""
        variables = [self._variable_for(node) for node in outputs]
        self._add_node(op, inputs, variables, attrs)
        for node, variable in zip(outputs, variables):
            self.bind(node, variable)
            self.expect(node)
        return variables

    def expect(self, node: Any) -> None:
        """Hold the tensor bound to `node` to the node's traced shape and dtype (at this call:
        a submodule's nodes carry each call's shapes while it is walked)."""
        tensor = self._values.get(node)
        shape = getattr(node, "shape", None)
        if isinstance(tensor, gs.Variable) and shape is not None:
            self.expected.append((tensor, tuple(shape), getattr(node, "dtype", None)))
            if axes := self.batch_axes(node):
                self.batch_dependent.append((tensor, axes))

    def batch_axes(self, node: Any) -> frozenset[int] | None:
        """The axes of `node` whose size changes with the batch (found by running MegEngine at
        another batch size, see batchprobe): empty without a dynamic batch, None where that
        run could not reach the node."""
        if not self.dynamic_batch:
            return frozenset()
        shape = getattr(node, "shape", None)
        other = self.batch_probe.shape(node) if self.batch_probe is not None else None
        if shape is None or other is None or len(other) != len(shape):
            return None
        return frozenset(axis for axis, (a, b) in enumerate(zip(shape, other)) if a != b)

    def is_batch_axis(self, node: Any, axis: int) -> bool:
        """Whether `axis` of `node` changes with a dynamic batch; where unknown, axis 0 is."""
        axes = self.batch_axes(node)
        return axis == 0 if axes is None else axis in axes

    def op(self, op: str, inputs: Sequence[Any], *, outputs: int = 1, **attrs: Any
           ) -> gs.Variable | list[gs.Variable]:
        """Add one intermediate node; returns its (new, uniquely named) output tensor(s)."""
        variables = [gs.Variable(self.unique(f"{self.base_name}/{op}_out"))
                     for _ in range(outputs)]
        self._add_node(op, inputs, variables, attrs)
        return variables[0] if outputs == 1 else variables

    def _add_node(self, op: str, inputs: Sequence[Any], outputs: list[gs.Variable],
                  attrs: dict[str, Any]) -> None:
        tensors = [self._as_tensor(item) for item in inputs]
        name = self.node_name(self.base_name)
        attrs = {key: value for key, value in attrs.items() if value is not None}
        node = gs.Node(op=op, name=name, attrs=attrs, inputs=tensors, outputs=outputs)
        self.graph.nodes.append(node)
        self.provenance[name] = self._provenance()

    def _as_tensor(self, item: Any) -> gs.Tensor:
        if item is None or (isinstance(item, str) and item == ""):
            return gs.Variable.empty()
        if isinstance(item, gs.Tensor):
            return item
        return self.arg(item)

    def adopt_name(self, node: Any) -> None:
        """Give the tensor bound to `node` the node's own name, when that tensor was made inside
        an inlined submodule (a graph input or constant keeps its name)."""
        tensor = self._values.get(node)
        if (isinstance(tensor, gs.Variable) and tensor.inputs and tensor.name != node.name
                and node.name not in self._used_names):
            self.reserve(node.name)
            tensor.name = node.name

    def _variable_for(self, node: Any) -> gs.Variable:
        name = self.name_prefix + node.name
        if name in self._used_names:
            name = self.unique(name)
        else:
            self.reserve(name)
        dtype = getattr(node, "dtype", None)
        shape = getattr(node, "shape", None)
        if shape is not None and self.expr is not None and any(
                map(self.has_runtime_shape, self.expr.inputs)):
            shape = [None] * len(shape)  # rank only: the sizes depend on the data
        elif self.dynamic_batch or shape is None:
            shape = None
        return gs.Variable(name, dtype=exported_dtype(dtype),
                           shape=list(shape) if shape is not None else None)

    def _provenance(self) -> dict[str, str]:
        """Computed once per expr (repr of an expr unflattens its arguments: not cheap)."""
        if self.expr is None:
            return {}
        if self._provenance_of[0] is None:
            self._provenance_of = (self.expr, self._describe_expr())
        return self._provenance_of[1]

    def _describe_expr(self) -> dict[str, str]:
        outputs = self.expr.outputs
        return {"module": self.module_path,
                "qualname": outputs[0].qualname if outputs else "",
                "orig_name": orig_name(outputs[0]) if outputs else "",
                "expr": _expr_text(self.expr, self._global_names())}

    def _global_names(self) -> dict[str, str]:
        """Inside an inlined submodule, the expr's local node names -> the names users see
        (tensor names in the ONNX graph, the module path for the called module)."""
        if not self.name_prefix:
            return {}
        names = {node.name: self.name_prefix + node.name for node in self.expr.outputs}
        for node in self.expr.inputs:
            if node in self._values:
                names[node.name] = self._values[node].name
            elif hasattr(node, "module_type") and self.module_path:
                names[node.name] = self.module_path
        return names


def _is_node(value: Any) -> bool:
    return hasattr(value, "expr") and hasattr(value, "users")


def _to_numpy(value: Any) -> np.ndarray:
    return value.numpy() if hasattr(value, "numpy") else np.asarray(value)


def _const_name(node: Any) -> str:
    qualname = getattr(node, "qualname", "") or node.name
    # Net.conv_bn.0.weight -> conv_bn.0.weight; Net.[const_tensor] -> const_tensor
    tail = qualname.split(".", 1)[1] if "." in qualname else qualname
    return tail.replace("[", "").replace("]", "") or node.name


def orig_name(node: Any) -> str:
    """What older MegEngine called `_orig_name`: `conv_bn.1_out` for the output of module
    `conv_bn.1` (qualname `Net.conv_bn.1.[out]`), else the node's own name."""
    _, _, rest = (getattr(node, "qualname", "") or "").partition(".")
    path, sep, leaf = rest.rstrip("]").rpartition(".[")
    if sep and path:
        return f"{path}_{leaf}"
    return node.name


def _expr_text(expr: Any, names: dict[str, str]) -> str:
    text = repr(expr).split("\t", 1)[-1]
    if names:
        pattern = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
        text = re.sub(rf"(?<![\w.])({pattern})(?![\w.])", lambda m: names[m.group(1)], text)
    return text if len(text) <= 200 else text[:197] + "..."


def exported_dtype(dtype: Any) -> np.dtype | None:
    """The ONNX dtype of a tensor MegEngine traced with `dtype`: a quantized dtype (qint8,
    quint8, qint32: int8/uint8/int32 with an `mgb_dtype` tag) is exported as the float32 its
    DequantizeLinear gives, never as the storage integer."""
    if dtype is None:
        return None
    if (getattr(dtype, "metadata", None) or {}).get("mgb_dtype"):
        return np.dtype(np.float32)
    return np.dtype(dtype)
