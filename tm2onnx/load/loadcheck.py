"""What a safely unpickled TracedModule may do when run: call MegEngine functions, tensor
methods and modules, read attributes by plain names. Checked before anything executes, since
exprs name callables by strings that MegEngine resolves by getattr."""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

from .loadpolicy import SAFE_FUNCTION_MODULES, UNSAFE_NAME_PARTS, Policy, resolve_name, under

# Tensor dunders a trace records: the operator protocol, indexing, and a few conversions.
_OPERATOR_DUNDERS = frozenset(
    f"__{prefix}{name.strip('_')}__"
    for name in dir(operator) if name.startswith("__") and name.endswith("__")
    for prefix in ("", "r", "i")) | {"__getitem__", "__setitem__", "__len__", "__neg__",
                                    "__pos__", "__abs__", "__invert__", "__round__",
                                    "__float__", "__int__", "__bool__", "__index__"}
_BAD_DUNDERS = {"__init__", "__new__", "__setattr__", "__delattr__", "__getattribute__",
                "__getattr__", "__reduce__", "__reduce_ex__", "__setstate__", "__getstate__",
                "__class__", "__init_subclass__", "__subclasshook__", "__call__", "__del__"}
MODULE_METHODS = {"__call__", "forward"}


def check_graph(model: Any, policy: Policy) -> str | None:
    """The first expr that would call or reach something outside a TracedModule, or None."""
    for expr in _all_exprs(model):
        if reason := _expr_reason(expr, policy):
            return reason
    return None


def _all_exprs(model: Any) -> Iterator[Any]:
    import megengine.traced_module as tm

    for module in model.modules():
        if isinstance(module, tm.TracedModule):
            for graph in module.argdef_graph_map.values():
                yield from graph._exprs


def _expr_reason(expr: Any, policy: Policy) -> str | None:
    from megengine.traced_module import expr as E
    from megengine.traced_module.node import ModuleNode

    if isinstance(expr, E.CallFunction):
        return _function_reason(expr.func, policy)
    if isinstance(expr, E.CallMethod):
        on_module = isinstance(expr.inputs[0], ModuleNode)
        if on_module and expr.method not in MODULE_METHODS:
            return f"a traced module method {expr.method!r} is not forward/__call__"
        if expr.method == "__new__":
            return _tensor_new_reason(expr)
        if not on_module and not _tensor_method_ok(expr.method):
            return f"tensor method {expr.method!r} is not one a trace records"
    if isinstance(expr, E.GetAttr) and any(p.startswith("__") for p in expr.name.split(".")):
        return f"attribute path {expr.name!r} reaches into Python internals"
    if isinstance(expr, E.Apply):
        kind = type(expr.opdef)
        if (not policy.module_ok(kind.__module__) or
                any(bad in kind.__name__ for bad in UNSAFE_NAME_PARTS)):
            return f"op {kind.__module__}.{kind.__name__} is not a MegEngine compute op"
    return None


def _function_reason(func: Any, policy: Policy) -> str | None:
    if isinstance(func, tuple):  # MegEngine could not (or was not allowed to) import it
        return f"function {'.'.join(map(str, func))!r} was not resolved"
    module = getattr(func, "__module__", None) or ""
    name = getattr(func, "__qualname__", "") or ""
    if not callable(func) or not under(module, SAFE_FUNCTION_MODULES + policy.allow) or \
            any(p.startswith("__") for p in name.split(".")):
        return f"function {module}.{name} is not a MegEngine function"
    if resolve_name(module, name) is not func:  # an object posing under a MegEngine name
        return f"function {module}.{name} is not the object that name imports"
    return None


def _tensor_new_reason(expr: Any) -> str | None:
    """`mge.Tensor(x)` in a forward is traced as `Tensor.__new__` on the class itself (the
    tracer patches only Tensor.__new__): allowed on MegEngine's Tensor classes, nothing else."""
    import megengine as mge

    cls = expr.args[0] if expr.args else None
    if (isinstance(cls, type) and issubclass(cls, mge.Tensor)
            and resolve_name(cls.__module__, cls.__qualname__) is cls
            and cls.__module__.split(".")[0] == "megengine"):
        return None
    return f"'__new__' is called on {cls!r}, not on a MegEngine Tensor class"


def _tensor_method_ok(method: str) -> bool:
    """The methods MegEngine's tracer wraps (its own list: `__floor__`, `_broadcast`, ...),
    and public or operator methods of Tensor that older traces may hold."""
    import megengine as mge
    from megengine.traced_module.module_tracer import get_tensor_wrapable_method

    if method in _BAD_DUNDERS or not hasattr(mge.Tensor, method):
        return False
    return (method in get_tensor_wrapable_method() or not method.startswith("_")
            or method in _OPERATOR_DUNDERS)
