"""Numbers-first validation: run the ONNX model in onnxruntime and the reference (MegEngine,
or another ONNX model) on the same feeds (seeded, or the user's files), compare every output,
warn when the comparison proves nothing, and on failure localize the first diverging tensor."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ..runtime import Comparison, compare
from ..runtime.compare import DEFAULT_ATOL_SCALE, DEFAULT_RTOL, Tolerance, merge
from ..runtime.inputs import fill_dims, int_ranges, load_inputs, random_feeds
from ..runtime.session import make_session, provider, run_model
from ..runtime.steps import OutputSteps, activation_grids, has_activation_qdq, output_steps
from .localize_quant import ForcedReport
from .localize_report import Localization
from .validate_toolchain import ToolchainCheck, ToolchainRun

DEFAULT_ATOL = None  # scaled to each output: DEFAULT_ATOL_SCALE * max|reference|
Feeds = dict[str, np.ndarray]


@dataclass(frozen=True)
class ValidationReport:
    subject: str
    reference: str
    device: str                 # the onnxruntime provider that ran the subject
    seed: int
    feeds: dict[str, tuple[tuple[int, ...], str]]
    comparison: Comparison
    runs: int = 1
    source: str = ""            # "seed 0", "seeds 0..4", or the --inputs files
    int_ranges: dict[str, tuple[int, int, str]] | None = None
    warnings: tuple[str, ...] = ()
    strict: bool = False
    localization: Localization | None = None
    reference_device: str = ""  # the provider that ran an ONNX reference
    steps: tuple[OutputSteps, ...] = ()  # quantized outputs end to end, in steps
    forced: ForcedReport | None = None  # the verdict on a QDQ model against MegEngine
    toolchain: ToolchainCheck | None = None  # --runtime: another toolchain on the same feeds
    filled_dims: dict[str, int] | None = None  # symbolic input dims no --dim sized

    def __bool__(self) -> bool:
        verdict = self.comparison if self.forced is None else self.forced
        return (bool(verdict) and not (self.strict and self.warnings)
                and (self.toolchain is None or bool(self.toolchain)))

    def __str__(self) -> str:
        inputs = ", ".join(f"{name} {list(shape)} {dtype}"
                           for name, (shape, dtype) in self.feeds.items())
        ref_device = f" ({self.reference_device})" if self.reference_device else ""
        lines = [f"validate: {self.subject} (onnxruntime {self.device}) vs {self.reference}"
                 + ref_device,
                 f"inputs:   {inputs}   ({self.source or f'seed {self.seed}'})"]
        lines += [f"ints:     {name} in [{lo}, {hi}) ({why})"
                  for name, (lo, hi, why) in (self.int_ranges or {}).items()]
        if self.filled_dims:
            sizes = ", ".join(f"{name}={size}" for name, size in self.filled_dims.items())
            lines.append(f"WARNING: symbolic dims filled: {sizes} (no --dim given; "
                         f"--dim NAME=SIZE sets them)")
        lines += self._quantized() if self.forced is not None else [str(self.comparison)]
        lines += [f"WARNING: {text}" + (" (--strict: counted as a failure)" if self.strict else "")
                  for text in self.warnings]
        lines.append(self._needed() if self.forced is None else
                     f"verdict:  {'PASS' if self else 'FAIL'} (per layer, teacher-forced; "
                     f"--atol compares end to end instead)")
        lines += self.toolchain.lines() if self.toolchain is not None else []
        if self.localization is not None:
            lines.append(str(self.localization))
        return "\n".join(lines)

    def _quantized(self) -> list[str]:
        runs = f"{self.runs} run{'s' * (self.runs != 1)}"
        head = (f"end to end (no forcing; reported, not the verdict: one-step flips at ties "
                f"compound over layers), {runs}:")
        lines = [head]
        lines += [steps.row() for steps in self.steps]
        lines += [d.row() for d in self.comparison.diffs
                  if d.name not in {steps.name for steps in self.steps}]
        return lines + [str(self.forced)]

    def _needed(self) -> str:
        diffs = [d for d in self.comparison.diffs if np.isfinite(d.needed_atol)]
        if not diffs:
            return "needed:   no finite tolerance makes these outputs match"
        worst = max(diffs, key=lambda d: d.needed_atol / d.scale if d.scale else np.inf)
        ratio = worst.needed_atol / worst.scale if worst.scale else 0.0
        return (f"needed:   atol >= {worst.needed_atol:.3g} on {worst.name} ({ratio:.3g} x its "
                f"max|ref| {worst.scale:.3g}) at rtol {self.comparison.rtol:g}")

    def to_dict(self) -> dict:
        return {"passed": bool(self), "subject": self.subject, "reference": self.reference,
                "device": self.device, "reference_device": self.reference_device,
                "inputs": {name: {"shape": list(shape), "dtype": dtype}
                           for name, (shape, dtype) in self.feeds.items()},
                "source": self.source or f"seed {self.seed}", "runs": self.runs,
                "int_ranges": {name: list(r) for name, r in (self.int_ranges or {}).items()},
                "warnings": list(self.warnings), "strict": self.strict,
                "filled_dims": dict(self.filled_dims or {}),
                "comparison": self.comparison.to_dict(),
                "localization": (self.localization.to_dict() if self.localization is not None
                                 else None),
                "verdict": "end-to-end" if self.forced is None else "teacher-forced",
                "end_to_end_steps": [steps.to_dict() for steps in self.steps],
                "teacher_forced": self.forced.to_dict() if self.forced is not None else None,
                "toolchain": self.toolchain.to_dict() if self.toolchain is not None else None}

    def to_json(self) -> str:
        """Strict JSON: inf/NaN statistics become the strings "inf"/"nan"."""
        return json.dumps(_finite(self.to_dict()), indent=2, default=float, allow_nan=False)


def against_megengine(model: onnx.ModelProto, traced: Any, *, subject: str = "model.onnx",
                      reference: str = "MegEngine", teacher_forced: bool | str = "auto",
                      **options: Any) -> ValidationReport:
    """Compare onnxruntime with MegEngine; inputs and outputs match by position.
    Options: see `_validate` (seed, runs, inputs, dims, int_range, device, rtol, atol,
    atol_scale, strict, localize). `teacher_forced` ("auto": a model quantizing activations,
    no explicit atol): the verdict is the per-layer check of localize_quant, end-to-end
    differences are reported in steps."""
    from ..runtime.megengine_ref import run_traced

    names = [output.name for output in model.graph.output]
    quantized = teacher_forced is True or (teacher_forced == "auto" and options.get("atol") is
                                           None and has_activation_qdq(model))
    if quantized:
        from .localize_quant import deployed

        traced, why = deployed(traced)
        reference += f", {why}" if why else ""

    def run_reference(feeds: Feeds) -> Feeds:
        return dict(zip(names, run_traced(traced, list(feeds.values()))))

    forced = None
    if quantized:
        from .localize_quant import teacher_forced as check

        def forced(samples: list[Feeds], device: str, tolerance: Tolerance) -> ForcedReport:
            return check(model, traced, samples, device=device, tolerance=tolerance)

    return _validate(model, traced, run_reference, subject=subject, reference=reference,
                     reference_device="", forced=forced, **options)


def against_onnx(model: onnx.ModelProto, reference_model: onnx.ModelProto, *,
                 subject: str = "model.onnx", reference: str = "reference.onnx",
                 reference_device: str | None = None, teacher_forced: bool | str = "auto",
                 **options: Any) -> ValidationReport:
    """Compare two ONNX models (e.g. before and after transforms); inputs and outputs match by
    position, the reference runs with onnxruntime's graph optimizations off (on
    `reference_device`, default the subject's device). `teacher_forced` ("auto": both models
    quantize activations, no explicit atol): the verdict is localize_quant_onnx's per-tensor
    check in steps, end-to-end steps reported (the two runs round differently: the reference's
    float arithmetic, the subject's int8 kernels)."""
    ref_device = reference_device or options.get("device", "cpu")
    session = make_session(reference_model, device=ref_device, opt_level="disable")
    ref_inputs = [i.name for i in session.get_inputs()]
    renamed = {r.name: m.name for r, m in zip(reference_model.graph.output, model.graph.output)}

    def run_reference(feeds: Feeds) -> Feeds:
        out = run_model(session, dict(zip(ref_inputs, feeds.values())))
        return {renamed.get(name, name): value for name, value in out.items()}

    forced = None
    if teacher_forced is True or (teacher_forced == "auto" and options.get("atol") is None
                                  and has_activation_qdq(model)
                                  and has_activation_qdq(reference_model)):
        from .localize_quant_onnx import teacher_forced_onnx

        def forced(samples: list[Feeds], device: str, tolerance: Tolerance) -> ForcedReport:
            return teacher_forced_onnx(model, reference_model, samples, device=device,
                                       reference_device=_device_of(provider(session)),
                                       tolerance=tolerance, subject=subject,
                                       reference=reference)

    filled: dict[str, int] = {}
    if options.get("inputs") is None:
        # Dynamic axes (DistilBERT's batch, sequence) get 1 each unless --dim sizes them, as
        # Polygraphy does; the report says which were filled.
        options["dims"], filled = fill_dims(model, options.get("dims"))
    report = _validate(model, reference_model, run_reference, subject=subject,
                       reference=reference, reference_device=provider(session), forced=forced,
                       **options)
    return dataclasses.replace(report, filled_dims=filled)


def _validate(model: onnx.ModelProto, reference_obj: Any, run_reference: Callable[[Feeds], Feeds],
              *, subject: str, reference: str, reference_device: str, seed: int = 0,
              runs: int = 1, inputs: str | list[str] | None = None,
              dims: dict[str, int] | None = None, int_range: tuple[int, int] | None = None,
              device: str = "cpu", rtol: float = DEFAULT_RTOL, atol: float | None = DEFAULT_ATOL,
              atol_scale: float = DEFAULT_ATOL_SCALE, strict: bool = False,
              localize: bool | str = "auto", forced: Callable | None = None,
              toolchain: ToolchainRun | None = None) -> ValidationReport:
    """`localize`: True always, "auto" when outputs differ (and no `forced` check names the
    layer), False never. `forced(samples, device, tolerance)`: the teacher-forced verdict.
    `toolchain`: runs another runtime on every sample (validate_toolchain.py)."""
    samples, source = _samples(model, inputs, seed, runs, dims, int_range)
    session = make_session(model, device=device)
    grids = activation_grids(model) if forced is not None else {}
    if forced is not None and atol is None and (out := [grids[o.name] for o in model.graph.output
                                                        if o.name in grids]):
        atol = max(out) * (1 + 1e-3)  # the end-to-end table: one step of the outputs
    comparison, steps = None, {}
    for index, feeds in enumerate(samples):
        reference_values, values = run_reference(feeds), run_model(session, feeds)
        result = compare(reference_values, values, rtol=rtol, atol=atol, atol_scale=atol_scale)
        comparison = result if comparison is None else merge(comparison, result, runs=index)
        for name, found in output_steps(reference_values, values, grids).items():
            steps[name] = steps[name].merged(found) if name in steps else found
        if toolchain is not None:
            toolchain(feeds, values, reference_values, ort_device=_device_of(provider(session)))
    warnings = tuple(_input_warnings(samples) + comparison.warnings)
    verdict = None
    if forced is not None:
        verdict = forced(samples, _device_of(provider(session)),
                         Tolerance(rtol, None, atol_scale))
    found = None
    if localize is True or (localize == "auto" and not comparison and verdict is None):
        from .localize import localize as run_localize

        found = run_localize(model, reference_obj, feeds=samples[0], device=device,
                             reference_device=_device_of(reference_device),
                             rtol=rtol, atol=atol, atol_scale=atol_scale, subject=subject,
                             reference_name=reference)
    ranges = int_ranges(model, int_range) if inputs is None else None
    return ValidationReport(subject, reference, _device_of(provider(session)), seed,
                            _describe(samples[0]), comparison, len(samples), source, ranges,
                            warnings, strict, found,
                            reference_device and _device_of(reference_device),
                            tuple(steps.values()), verdict,
                            toolchain.result() if toolchain is not None else None)


def _samples(model: onnx.ModelProto, inputs: Any, seed: int, runs: int,
             dims: dict[str, int] | None, int_range: tuple[int, int] | None
             ) -> tuple[list[Feeds], str]:
    if inputs is not None:
        samples = load_inputs(inputs, model)
        files = inputs if isinstance(inputs, str) else ",".join(inputs)
        return samples, f"{files}, {len(samples)} sample{'s' * (len(samples) != 1)}"
    seeds = range(seed, seed + max(runs, 1))
    samples = [random_feeds(model, seed=s, dims=dims, int_range=int_range) for s in seeds]
    return samples, f"seed {seed}" if runs <= 1 else f"seeds {seed}..{seed + runs - 1}"


def _input_warnings(samples: list[Feeds]) -> list[str]:
    return [f"input {name} is all zeros: a zero input hides wrong weights and scales"
            for name, value in samples[0].items() if value.size and value.dtype != np.bool_
            and all(not sample[name].any() for sample in samples)]


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def _device_of(provider_name: str) -> str:
    """'cpu' / 'cuda' for the provider that really ran (what --device auto resolved to)."""
    return "cuda" if provider_name.startswith("CUDA") else "cpu"


def _describe(feeds: Feeds) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: (tuple(value.shape), str(value.dtype)) for name, value in feeds.items()}
