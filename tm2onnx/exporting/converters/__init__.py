"""Converter registries, one per kind of expr: module calls keyed by module type (a subclass
only when it runs the base's own forward), function calls keyed by the function object, tensor
methods keyed by method name, and `Apply` exprs keyed by the exact MegEngine OpDef type.
`find_converter` is the only switch on expr kinds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from megengine.traced_module.expr import Apply, CallFunction, CallMethod
from megengine.traced_module.node import ModuleNode

from ...errors import Tm2OnnxError

Converter = Callable[..., None]

MODULE_CONVERTERS: dict[type, Converter] = {}
FUNCTION_CONVERTERS: dict[Callable, Converter] = {}
METHOD_CONVERTERS: dict[str, Converter] = {}
APPLY_CONVERTERS: dict[type, Converter] = {}


def _register(registry: dict, keys: tuple, what: str) -> Callable[[Converter], Converter]:
    def decorator(fn: Converter) -> Converter:
        for key in keys:
            if key in registry:
                raise Tm2OnnxError(f"{what} converter for {key!r} registered twice",
                                   hint=f"{registry[key].__module__} already has one")
            registry[key] = fn
        return fn
    return decorator


def module_converter(*module_types: type, covers: tuple[type, ...] = ()
                     ) -> Callable[[Converter], Converter]:
    """`fn(ctx, expr, module)` converts `module(...)` calls. A lookup through the MRO is a
    promise that the subclass computes what the base computes, so a subclass inherits the
    converter only when it runs the base's own `forward` (a user `MyConv(M.Conv2d)` changing
    just `__init__`). Subclasses overriding `forward` (qat./quantized. modules with their fake
    quantization, user subclasses doing more) are refused by name, unless the converter lists
    them in `covers=` after checking they compute the same in eval mode."""
    return _register(MODULE_CONVERTERS, module_types + tuple(covers), "module")


def function_converter(*functions: Callable) -> Callable[[Converter], Converter]:
    """`fn(ctx, expr)` converts calls of these function objects (e.g. `F.relu`)."""
    return _register(FUNCTION_CONVERTERS, functions, "function")


def method_converter(*names: str) -> Callable[[Converter], Converter]:
    """`fn(ctx, expr)` converts tensor method calls (`__mul__`, `reshape`, ...)."""
    return _register(METHOD_CONVERTERS, names, "method")


def apply_converter(*opdef_types: type) -> Callable[[Converter], Converter]:
    """`fn(ctx, expr)` converts raw `apply(opdef, ...)` exprs (e.g. GetVarShape)."""
    return _register(APPLY_CONVERTERS, opdef_types, "apply")


def find_converter(expr: Any) -> Converter | None:
    """The converter for an expr, or None when tm2onnx has none."""
    if isinstance(expr, CallMethod):
        target = expr.inputs[0] if expr.inputs else None
        if isinstance(target, ModuleNode):
            if expr.method != "__call__":
                return None
            return _module_converter(target.module_type)
        return METHOD_CONVERTERS.get(expr.method)
    if isinstance(expr, CallFunction):
        return FUNCTION_CONVERTERS.get(expr.func)
    if isinstance(expr, Apply):  # OpDef types have no meaningful hierarchy: exact type only
        return APPLY_CONVERTERS.get(type(expr.opdef))
    return None


def describe_target(expr: Any) -> str:
    """What an expr calls, in MegEngine terms: `F.nn.pixel_shuffle`, `Tensor.cumsum`, `M.Conv2d`."""
    if isinstance(expr, CallMethod):
        target = expr.inputs[0] if expr.inputs else None
        if isinstance(target, ModuleNode):
            return f"{module_name(target.module_type)}.{expr.method}{_refusal(target.module_type)}"
        return f"Tensor.{expr.method}"
    if isinstance(expr, CallFunction):
        module = expr.func.__module__.replace("megengine.functional", "F")
        return f"{module}.{expr.func.__name__}"
    if isinstance(expr, Apply):
        return f"apply({type(expr.opdef).__name__})"
    return type(expr).__name__


def module_name(cls: type) -> str:
    """`M.Conv2d`, `M.qat.Conv2d`, `M.quantized.ConvBn2d`, or a user class's full path."""
    package = cls.__module__
    if package.startswith("megengine.module"):
        sub = package.split(".")[2:-1]  # megengine.module.qat.conv -> ["qat"]
        return ".".join(["M", *sub, cls.__name__])
    return f"{package}.{cls.__qualname__}"


def _registered_base(cls: type) -> type | None:
    return next((base for base in cls.__mro__ if base in MODULE_CONVERTERS), None)


def _module_converter(cls: type) -> Converter | None:
    base = _registered_base(cls)
    if base is None or (base is not cls and cls.forward is not base.forward):
        return None
    return MODULE_CONVERTERS[base]


def _refusal(cls: type) -> str:
    """Why a module with a converter for its base is refused ("" when it is not)."""
    base = _registered_base(cls)
    if base is None or base is cls or cls.forward is base.forward:
        return ""
    return (f" (overrides forward of {module_name(base)}, whose converter does not cover it; "
            "a float export would drop what its forward adds)")


def load_all() -> None:
    """Import every converter module so its decorators run; a new converters/<family>.py
    needs no edit here."""
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
