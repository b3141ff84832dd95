"""The flat module paths from before the subpackages (tm2onnx.loading, tm2onnx.exporter, ...)
stay importable: each old name is an alias of its new home, the same module object (not a
re-exporting copy), so registries load once and monkeypatching an old path patches the code
that runs. New code imports the new paths; lint-imports checks only those."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

_NEW_HOME = {
    "cli": ["bench_cli:bench", "commands", "options", "validate_cli:validate"],
    "exporting": ["batchprobe", "callshapes", "context", "converters", "exporter", "guards",
                  "targets", "walk"],
    "load": ["loadcheck", "loading", "loadpolicy"],
    "check": ["checking", "localize", "localize_plot", "localize_quant", "localize_quant_onnx",
              "localize_report", "validate", "validate_toolchain"],
}
MOVED = {f"tm2onnx.{entry.partition(':')[0]}":
         f"tm2onnx.{package}.{entry.partition(':')[2] or entry}"
         for package, entries in _NEW_HOME.items() for entry in entries}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        pass  # already executed under its new name


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path=None, target=None):
        # also the submodules of a moved package (tm2onnx.converters.quant): found under the
        # old parent they would load a second time, registering every converter twice
        old = next((old for old in MOVED if name == old or name.startswith(old + ".")), None)
        if old is None:
            return None
        return importlib.machinery.ModuleSpec(name, _Alias(MOVED[old] + name[len(old):]))


if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedFinder())
