"""Numbers-first validation: run the ONNX model in onnxruntime and the reference (MegEngine,
or another ONNX model) on the same seeded feeds, and compare every output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from .runtime import Comparison, compare, random_feeds, run_model
from .runtime.megengine_ref import run_traced

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL = 1e-4


@dataclass(frozen=True)
class ValidationReport:
    subject: str
    reference: str
    device: str
    seed: int
    feeds: dict[str, tuple[tuple[int, ...], str]]
    comparison: Comparison

    def __bool__(self) -> bool:
        return bool(self.comparison)

    def __str__(self) -> str:
        inputs = ", ".join(f"{name} {list(shape)} {dtype}"
                           for name, (shape, dtype) in self.feeds.items())
        return "\n".join([f"validate: {self.subject} (onnxruntime {self.device}) vs {self.reference}",
                          f"inputs:   {inputs}   (seed {self.seed})",
                          str(self.comparison)])


def against_megengine(model: onnx.ModelProto, traced: Any, *, subject: str = "model.onnx",
                      reference: str = "MegEngine", seed: int = 0, device: str = "cpu",
                      rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                      dims: dict[str, int] | None = None) -> ValidationReport:
    """Compare onnxruntime with MegEngine on seeded feeds; inputs and outputs match by position."""
    feeds = random_feeds(model, seed=seed, dims=dims)
    got = run_model(model, feeds, device=device)
    expected = run_traced(traced, list(feeds.values()))
    names = [output.name for output in model.graph.output]
    ref = dict(zip(names, expected))
    return ValidationReport(subject, reference, device, seed, _describe(feeds),
                            compare(ref, got, rtol=rtol, atol=atol))


def against_onnx(model: onnx.ModelProto, reference_model: onnx.ModelProto, *,
                 subject: str = "model.onnx", reference: str = "reference.onnx", seed: int = 0,
                 device: str = "cpu", rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
                 dims: dict[str, int] | None = None) -> ValidationReport:
    """Compare two ONNX models (e.g. before and after transforms); outputs match by position,
    the reference runs with onnxruntime's graph optimizations off."""
    feeds = random_feeds(reference_model, seed=seed, dims=dims)
    ref_out = run_model(reference_model, feeds, device=device, opt_level="disable")
    model_feeds = {v.name: f for v, f in zip(_real_inputs(model), feeds.values())}
    got = run_model(model, model_feeds, device=device)
    renamed = {r.name: m.name for r, m in zip(reference_model.graph.output, model.graph.output)}
    return ValidationReport(subject, reference, device, seed, _describe(feeds),
                            compare(ref_out, got, rtol=rtol, atol=atol, names=renamed))


def _real_inputs(model: onnx.ModelProto) -> list:
    initializers = {i.name for i in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in initializers]


def _describe(feeds: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: (tuple(value.shape), str(value.dtype)) for name, value in feeds.items()}
