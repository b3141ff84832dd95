"""`validate --runtime NAME`: the same feeds through another toolchain (runtime/toolchains.py),
compared with onnxruntime and with the reference (MegEngine, or the --against model) in the
same report. Imports no MegEngine."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..runtime.compare import Comparison, compare, merge
from ..runtime.toolchains import require, run_toolchain

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class ToolchainCheck:
    runtime: str
    precision: str
    versus: tuple[tuple[str, Comparison], ...]   # (what it was compared with, the comparison)

    def __bool__(self) -> bool:
        return all(bool(comparison) for _, comparison in self.versus)

    def lines(self) -> list[str]:
        lines = []
        for label, comparison in self.versus:
            lines += [f"{self.runtime} ({self.precision}) vs {label}:", str(comparison)]
        return lines

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "precision": self.precision, "passed": bool(self),
                "versus": {label: comparison.to_dict() for label, comparison in self.versus}}


class ToolchainRun:
    """Called once per sample by validate._validate with onnxruntime's and the reference's
    outputs; runs the toolchain on the same feeds and keeps the worst case over samples."""

    def __init__(self, runtime: str, model: onnx.ModelProto | str | Path, *,
                 precision: str = "f32", reference: str = "", rtol: float, atol: float | None,
                 atol_scale: float) -> None:
        require(runtime, precision)  # a missing extra fails before any model runs
        self.runtime, self.precision, self.reference = runtime, precision, reference
        self.tolerance = {"rtol": rtol, "atol": atol, "atol_scale": atol_scale}
        self._work = None
        if isinstance(model, onnx.ModelProto):  # exported in memory: the toolchains read files
            self._work = tempfile.TemporaryDirectory(prefix="tm2onnx-toolchain-")
            path = Path(self._work.name) / "model.onnx"
            onnx.save(model, str(path), save_as_external_data=model.ByteSize() > 2**31 - 2**20)
            model = path
        self.path = Path(model)
        self._merged: dict[str, Comparison] = {}
        self._runs = 0

    def __call__(self, feeds: Feeds, onnxruntime: Feeds, reference: Feeds, *,
                 ort_device: str = "cpu") -> None:
        values = run_toolchain(self.runtime, self.path, feeds, self.precision)
        pairs = [(f"onnxruntime {ort_device}", onnxruntime)]
        if self.reference:
            pairs.append((self.reference, reference))
        for label, expected in pairs:
            found = compare(expected, values, **self.tolerance)
            self._merged[label] = (found if label not in self._merged
                                   else merge(self._merged[label], found, runs=self._runs))
        self._runs += 1

    def result(self) -> ToolchainCheck:
        if self._work is not None:
            self._work.cleanup()
        return ToolchainCheck(self.runtime, self.precision, tuple(self._merged.items()))
