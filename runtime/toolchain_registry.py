"""The registry of runtimes other than onnxruntime (`validate --runtime NAME`): name ->
runner(model_path, feeds, precision) -> outputs by ONNX output name, with the extra that
installs it. The runners live in runtime/toolchains.py (OpenVINO, TVM, MNN) and
runtime/toolchains_mobile.py (TFLite, ncnn); none of this imports MegEngine."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from tm2onnx.errors import RunError, Tm2OnnxError
from tm2onnx.runtime.session import _one_line

Feeds = dict[str, np.ndarray]
Runner = Callable[[Path, Feeds, str], Feeds]
PRECISIONS = ("f32", "f16", "bf16")


class MissingToolchain(Tm2OnnxError):
    """The runtime asked for is not installed: the message names the extra that installs it."""


@dataclass(frozen=True)
class Toolchain:
    name: str
    extra: str                  # pip install "tm2onnx[<extra>]"
    modules: tuple[str, ...]    # what must import for the runner to work
    precisions: tuple[str, ...]
    run: Runner
    note: str = ""              # what the extra needs beyond pip (e.g. a Python version)

    def missing(self) -> list[str]:
        return [name for name in self.modules if not _importable(name)]


TOOLCHAINS: dict[str, Toolchain] = {}


def toolchain(name: str, *, extra: str, modules: tuple[str, ...],
              precisions: tuple[str, ...] = ("f32",), note: str = "") -> Callable[[Runner], Runner]:
    """Register a runner under its `--runtime` name (once)."""
    def register(run: Runner) -> Runner:
        if name in TOOLCHAINS:
            raise ValueError(f"toolchain {name!r} registered twice")
        TOOLCHAINS[name] = Toolchain(name, extra, modules, precisions, run, note)
        return run
    return register


def require(name: str, precision: str = "f32") -> Toolchain:
    """The toolchain, installed and able to run at `precision`; else one line naming the fix."""
    if name not in TOOLCHAINS:
        raise Tm2OnnxError(f"unknown runtime {name!r}", hint=f"use one of {', '.join(TOOLCHAINS)}")
    found = TOOLCHAINS[name]
    if missing := found.missing():
        note = f" ({found.note})" if found.note else ""
        raise MissingToolchain(f"--runtime {name} needs {', '.join(missing)}, which is not "
                               f"installed", hint=f'pip install "tm2onnx[{found.extra}]"{note}')
    if precision not in found.precisions:
        raise Tm2OnnxError(f"--runtime {name} runs {'/'.join(found.precisions)}, not {precision}",
                           hint=f"use --precision {found.precisions[0]}")
    return found


def run_toolchain(name: str, model_path: str | Path, feeds: Feeds, precision: str = "f32"
                  ) -> Feeds:
    """Outputs by ONNX output name; a toolchain that cannot convert or run the model raises a
    RunError naming it (a refusal, never a silent mismatch)."""
    found = require(name, precision)
    try:
        with _stdout_to_stderr():
            return found.run(Path(model_path), feeds, precision)
    except Tm2OnnxError:
        raise
    except Exception as err:  # each toolchain raises its own unrelated types
        raise RunError(f"{name} cannot run {Path(model_path).name}: {_one_line(err)}",
                       hint="see docs/toolchains.md for what each runtime supports") from err


def output_names(model_path: Path) -> list[str]:
    model = onnx.load(str(model_path), load_external_data=False)
    return [output.name for output in model.graph.output]


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Toolchains print progress from C++ straight to file descriptor 1 (MNN's converter, its
    device banner): send it to stderr so that `validate --json` stays parseable."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a parent package missing, or a stub without a spec
        return False
