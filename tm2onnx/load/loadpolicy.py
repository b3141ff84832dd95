"""What a safe load may resolve, derived from what MegEngine's TracedModule pickling writes:
its own classes, the leaf types its pytree records (`LeafDef.type` holds `type(value)` of every
constant argument, and the metaclass of a class passed as one), and the reconstructors pickle
and numpy use for those values. Every name resolves to the very object it names."""

from __future__ import annotations

import _compat_pickle
import importlib
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import LoadError

# Modules whose *classes* a TracedModule pickle may name (a module and its submodules).
SAFE_CLASS_MODULES = (
    "megengine.traced_module.expr", "megengine.traced_module.node",
    "megengine.traced_module.pytree", "megengine.traced_module.serialization",
    "megengine.traced_module.traced_module", "megengine.module", "megengine.quantization",
    "megengine.tensor", "megengine.core._imperative_rt.common",
    "megengine.core._imperative_rt.ops", "megengine.core.tensor.dtype",
    "megengine.core.ops.builtin",
)
# Modules whose *functions* a traced CallFunction may call.
SAFE_FUNCTION_MODULES = ("megengine.functional", "megengine.core.tensor.array_method",
                         "megengine.core._imperative_rt.core2")
# What reaches outside the process (network, serialized native engines, Python callbacks)
# even under a safe module: a module, and parts of class names (RemoteSend, CollectiveComm,
# ExternOpr, TensorRTRuntime, AtlasRuntime, PyOpBase, ...).
UNSAFE_MODULES = ("megengine.module.external",)
UNSAFE_NAME_PARTS = ("Remote", "Collective", "Extern", "Runtime", "PyOp")
# Leaf types come from MegEngine's tables; only those defined by these packages are trusted
# (a user's register_supported_type in the same process does not widen the policy).
LEAF_PACKAGES = ("megengine", "numpy", "builtins", "abc", "collections", "inspect")
# Builtins a pickle references as values or calls to rebuild containers; none of them imports,
# evaluates code or touches the OS. `type` is the real one: `type(None)` is how pickle writes
# NoneType, and a LeafDef of a class argument (`dtype=np.float32`) records `type` itself.
SAFE_BUILTINS = ("bool", "int", "float", "complex", "str", "bytes", "bytearray", "tuple",
                 "list", "dict", "set", "frozenset", "slice", "range", "object", "type",
                 "Ellipsis", "NotImplemented")
UNSAFE_HINT = ("--trust-module MODULE (allow_modules=[...]) for a custom class you trust, or "
               "--unsafe-load (unsafe=True) for a file you trust completely")
SAFE_GLOBALS: dict[tuple[str, str], Any] = {}


class UnsafeLoadError(LoadError):
    """The pickle names a global outside what a TracedModule needs; nothing of it ran."""


def resolve_name(module: str, qualname: str) -> Any:
    """The object `module.qualname` names (None when there is none), without calling anything
    but import and getattr on plain names."""
    try:
        obj: Any = importlib.import_module(module)
    except ImportError:
        return None
    for part in qualname.split("."):
        if not part or part.startswith("__"):
            return None
        obj = getattr(obj, part, None)
    return obj


def pickle_name(obj: Any) -> tuple[str, str]:
    """The (module, qualname) pickle writes for a class or function."""
    qualname = obj.__qualname__
    return pickle.whichmodule(obj, qualname), qualname


def safe_globals() -> dict[tuple[str, str], Any]:
    """Every global a TracedModule pickle of MegEngine, numpy and standard types writes that is
    not a MegEngine class (those are allowed by module, see Policy)."""
    if not SAFE_GLOBALS:
        import builtins

        SAFE_GLOBALS.update({("builtins", name): getattr(builtins, name)
                             for name in SAFE_BUILTINS})
        for obj in (*_reconstructors(), *_leaf_classes()):
            name = pickle_name(obj)
            if resolve_name(*name) is obj:  # importable by that name (NoneType is not)
                SAFE_GLOBALS[name] = obj
    return SAFE_GLOBALS


def _reconstructors() -> Iterator[Any]:
    """How pickle and numpy rebuild the leaf values: arrays (`_reconstruct`, or `_frombuffer`
    under protocol 5), scalars, dtypes, bytes under protocol 2, and the containers pytree
    flattens (OrderedDict, defaultdict) and MegEngine stores (FullArgSpec)."""
    import _codecs
    import collections
    import inspect

    import numpy as np

    multiarray = np.core.multiarray
    yield from (multiarray._reconstruct, multiarray.scalar, np.core.numeric._frombuffer,
                np.dtype, np.ndarray, _codecs.encode, collections.OrderedDict,
                collections.defaultdict, inspect.FullArgSpec)


def _leaf_classes() -> set[type]:
    """The classes MegEngine's pytree treats as leaves or containers, the numpy subclasses of
    its numpy leaf bases (scalar types, `numpy.dtypes.*`: `type(x.dtype)` is Float32DType on
    numpy >= 1.25), and their metaclasses (`abc.ABCMeta` for Tensor and Module)."""
    from megengine.traced_module import pytree

    declared = {*pytree.SUPPORTED_LEAF_TYPE, *pytree.SUPPORTED_TYPE, *pytree.SUPPORTED_LEAF_CLS}
    classes: set[type] = set()
    for cls in declared:
        if isinstance(cls, type) and _from_packages(cls):
            classes.add(cls)
            if cls.__module__.split(".")[0] == "numpy":
                classes |= _subclasses(cls)
    classes |= {type(cls) for cls in classes}
    return {cls for cls in classes if _from_packages(cls)}


def _from_packages(cls: type) -> bool:
    return cls.__module__.split(".")[0] in LEAF_PACKAGES


def _subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    todo = [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def under(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class Policy:
    """What a load may resolve: `safe_globals()`, MegEngine's TracedModule classes, plus
    the classes (and traced functions) of `allow_modules`."""

    def __init__(self, allow_modules: Iterable[str] = ()):
        self.allow = tuple(allow_modules)
        self.refused: list[str] = []

    def module_ok(self, module: str, functions: bool = False) -> bool:
        safe = SAFE_CLASS_MODULES + (SAFE_FUNCTION_MODULES if functions else ())
        return under(module, safe + self.allow) and not under(module, UNSAFE_MODULES)

    def resolve_class(self, module: str, qualname: str) -> Any:
        module, qualname = python3_name(module, qualname)
        if (module, qualname) in safe_globals():
            return safe_globals()[(module, qualname)]
        what = f"{module}.{qualname}"
        if not self.module_ok(module):
            raise self.refuse(what)
        obj = resolve_name(module, qualname)
        # A class defined where it is named: not a function, a module, or a re-export.
        if (not isinstance(obj, type) or not self.module_ok(obj.__module__)
                or any(bad in what for bad in UNSAFE_NAME_PARTS)):
            raise self.refuse(what)
        return obj

    def refuse(self, what: str) -> UnsafeLoadError:
        self.refused.append(what)
        return UnsafeLoadError(f"refused to load global {what!r} (not part of a TracedModule)",
                               hint=UNSAFE_HINT)


def python3_name(module: str, qualname: str) -> tuple[str, str]:
    """Protocol 0-2 pickles name builtins the Python 2 way (`__builtin__.long`); map them as
    pickle's own find_class does, so the policy judges the Python 3 name."""
    if (module, qualname) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, qualname)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), qualname
