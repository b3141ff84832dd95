"""Load a pickled TracedModule without running what a hostile pickle holds: only the classes a
TracedModule is made of are resolved, MegEngine's own by-name imports are fenced the same way,
and the loaded graph is checked (functions, methods, attribute paths) before anything runs."""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import LoadError
from .loadpolicy import UNSAFE_HINT, Policy, UnsafeLoadError

__all__ = ["Policy", "UnsafeLoadError", "load_traced"]


class _Unpickler(pickle.Unpickler):
    def __init__(self, stream: Any, policy: Policy):
        super().__init__(stream)
        self.policy = policy

    def find_class(self, module: str, name: str) -> Any:
        return self.policy.resolve_class(module, name)


@contextlib.contextmanager
def _fenced_imports(policy: Policy) -> Iterator[None]:
    """MegEngine's __setstate__ methods import modules named by strings in the pickle
    (module types, functions): let them import only what the policy allows."""
    from megengine.traced_module import expr, node, serialization

    def guarded(name: str, package: str | None = None) -> Any:
        if not policy.module_ok(name, functions=True):
            policy.refused.append(name)
            raise ImportError(f"tm2onnx safe loading refused to import {name!r}")
        return importlib.import_module(name, package)

    import megengine.module as M

    to_module = serialization._ModuleState.to_module

    def checked_to_module(state: Any) -> Any:
        # It calls cls.__new__ and __setstate__ on the class it names: a Module class only.
        cls = policy.resolve_class(*state.module)
        if not issubclass(cls, M.Module):
            raise policy.refuse(".".join(state.module))
        return to_module(state)

    modules = (expr, node, serialization)
    saved = [m.import_module for m in modules]
    for module in modules:
        module.import_module = guarded
    serialization._ModuleState.to_module = checked_to_module
    try:
        yield
    finally:
        serialization._ModuleState.to_module = to_module
        for module, original in zip(modules, saved):
            module.import_module = original


@contextlib.contextmanager
def _quantized_conv_bn_compat() -> Iterator[None]:
    """MegEngine 1.13 pickles a `quantize`d (int8) ConvBn2d's call under the QAT class's name,
    and its loader for that name migrates `module.bn`, which the int8 module has not (it raises
    AttributeError: every saved int8 model with a ConvBn fails to load): run that migration
    only on modules that have a `bn`."""
    from megengine.traced_module import serialization

    loaders = serialization.MODULE_LOADER
    saved = {key: loader for key, loader in loaders.items()
             if key[1] in ("ConvBn2d", "ConvBnRelu2d")}

    def only_with_bn(original: Any) -> Any:
        def load(expr: Any) -> None:
            if hasattr(expr.inputs[0].owner, "bn"):
                original(expr)
        return load

    loaders.update({key: only_with_bn(loader) for key, loader in saved.items()})
    try:
        yield
    finally:
        loaders.update(saved)


def load_traced(path: str | os.PathLike, *, allow_modules: Iterable[str] = (),
                unsafe: bool = False) -> Any:
    """Unpickle a TracedModule saved with `pickle.dump(trace_module(...))` or `mge.save`,
    resolving only what a TracedModule is made of (see docs/safety.md); `allow_modules`
    adds trusted modules of custom classes, `unsafe=True` is plain pickle (trusted files only)."""
    import megengine.traced_module as tm

    path = Path(path)
    if not path.is_file():
        raise LoadError("no such file", where=str(path), hint="pass the path of a pickled .tm")
    policy = Policy(allow_modules)
    try:
        with path.open("rb") as handle, _quantized_conv_bn_compat():
            if unsafe:
                model = pickle.load(handle)
            else:
                with _fenced_imports(policy):
                    model = _Unpickler(handle, policy).load()
    except UnsafeLoadError as err:
        err.where = str(path)
        raise
    except Exception as err:
        if policy.refused:  # a refused import surfaced as MegEngine's own error
            raise _refusal(policy, path) from err
        raise LoadError(f"cannot unpickle: {type(err).__name__}: {err}", where=str(path),
                        hint="save it with pickle.dump(tm.trace_module(net, x), f)") from err
    if not isinstance(model, tm.TracedModule):
        raise LoadError(f"holds a {type(model).__name__}, not a TracedModule", where=str(path),
                        hint="trace it first: megengine.traced_module.trace_module(net, x)")
    if not unsafe:
        from .loadcheck import check_graph

        if reason := check_graph(model, policy):
            raise UnsafeLoadError(f"refused to load: {reason}", where=str(path), hint=UNSAFE_HINT)
    return model


def _refusal(policy: Policy, path: Path) -> UnsafeLoadError:
    return UnsafeLoadError(f"refused to import {policy.refused[0]!r} named inside the pickle "
                           "(not part of a TracedModule)", where=str(path), hint=UNSAFE_HINT)
