"""Teacher-forced check of a quantized (QDQ) export: MegEngine recomputes every tensor it shares
with the ONNX model from onnxruntime's values of that tensor's inputs, so each layer is judged
on its own, in steps, and rounding flips cannot compound (docs/quantization.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from ..runtime.compare import OutputDiff, Tolerance, diff_arrays
from ..runtime.session import cpu_has_vnni, exposing_session, run_model
from ..runtime.steps import StepCount, activation_grids, averaged_grids, count_steps

MAX_STEPS = 1          # a layer may differ by one step (ties and near-ties), never more
FORCED_SAMPLES = 8     # samples teacher-forced; end-to-end statistics use every run
# On the grid but steps off in a few elements, on a CPU without VNNI: onnxruntime's kernel,
# not the export, is the likely cause (docs/quantization.md).
SATURATION_HINT = ("this CPU has no VNNI, and onnxruntime's x86 U8S8 kernels then saturate "
                   "int16 sums of large activation x weight pairs; re-export with "
                   "--qdq-weights uint8 (exact here, slower) or validate on a VNNI CPU")
LISTED = 12            # tensors named in the one-step line (all of them in to_dict)


@dataclass(frozen=True)
class ForcedTensor:
    """One tensor both sides have, one side computing it from the other's values of its inputs
    (MegEngine from onnxruntime's; an ONNX subject from its ONNX reference's): in steps of its scale (quantized), in steps of the
    quantized tensors it averages (`gridded` False: need not lie on a grid), or at the float
    tolerance."""

    name: str
    shape: tuple[int, ...]
    scale: float | None = None            # quantization step; None for a float tensor
    steps: StepCount | None = None
    diff: OutputDiff | None = None
    forced: bool = True                   # onnxruntime's value replaced MegEngine's
    note: str = ""
    origin: dict[str, str] = field(default_factory=dict)
    gridded: bool = True                  # quantized: must lie on the grid of `scale`

    @property
    def passed(self) -> bool:
        if self.steps is not None:
            return (self.steps.on_grid or not self.gridded) and self.steps.max_steps <= MAX_STEPS
        return self.diff is not None and self.diff.passed

    def merged(self, other: ForcedTensor) -> ForcedTensor:
        if self.steps is not None and other.steps is not None:
            return replace(self, steps=self.steps + other.steps,
                           forced=self.forced and other.forced, note=self.note or other.note)
        worse = other if other.diff is not None and (self.diff is None or other.diff.rel_error
                                                     > self.diff.rel_error) else self
        return replace(worse, forced=self.forced and other.forced, note=self.note or other.note)

    def describe(self) -> str:
        where = "  ".join(f"{key}={self.origin[key]}" for key in ("module", "expr")
                          if self.origin.get(key))
        if self.steps is not None and not self.gridded:
            error = f"float, in steps {self.scale:.4g} of its quantized input: " + str(
                replace(self.steps, off_grid=0.0))
        elif self.steps is not None:
            error = f"step {self.scale:.4g}: {self.steps}"
        elif self.diff is not None:
            error = (f"float: max_abs {self.diff.max_abs:.3g} = {self.diff.rel_error:.3g} x "
                     f"max|ref| (allowed {self.diff.atol:.3g})")
        else:
            error = "not compared"
        note = f"  ({self.note})" if self.note else ""
        return f"{self.name} {list(self.shape)}: {error}{note}" + (f"\n      MegEngine: {where}"
                                                                    if where else "")

    def to_dict(self) -> dict:
        return {"tensor": self.name, "shape": list(self.shape), "scale": self.scale,
                "passed": self.passed, "on_grid_required": self.gridded, "forced": self.forced,
                "note": self.note,
                "steps": self.steps.to_dict() if self.steps is not None else None,
                "float": self.diff.to_dict() if self.diff is not None else None,
                "megengine": self.origin}


@dataclass(frozen=True)
class ForcedReport:
    """Every shared tensor, in the reference's execution order, over the forced samples."""

    tensors: tuple[ForcedTensor, ...]
    samples: int
    unmapped_outputs: tuple[str, ...] = ()
    reference: str = "MegEngine"          # what each tensor is judged against
    forcing: str = "MegEngine computed from onnxruntime's inputs"
    unmatched_hint: str = "export with tm2onnx"  # what to do when no tensor is shared

    def __bool__(self) -> bool:
        return bool(self.tensors) and all(t.passed for t in self.tensors) \
            and not self.unmapped_outputs

    @property
    def first_failure(self) -> ForcedTensor | None:
        return next((t for t in self.tensors if not t.passed), None)

    @property
    def quantized(self) -> list[ForcedTensor]:
        return [t for t in self.tensors if t.steps is not None]

    def __str__(self) -> str:
        quantized = self.quantized
        worst = max((t.steps.max_steps for t in quantized), default=0.0)
        total = sum(t.steps.size for t in quantized)
        one = sum(t.steps.one for t in quantized)
        head = (f"per layer (teacher-forced, {self.samples} sample{'s' * (self.samples != 1)}): "
                f"{len(self.tensors)} tensors {self.forcing}, "
                f"{len(quantized)} quantized: max {worst:.3g} step(s), "
                f"{one / total if total else 0.0:.3%} of elements one step")
        lines = [head]
        stepped = [t for t in quantized if t.steps.one and t.passed]
        if stepped:
            shown = ", ".join(f"{t.name} {t.steps.one}/{t.steps.size}"
                              for t in stepped[:LISTED])
            more = f", ... {len(stepped) - LISTED} more" if len(stepped) > LISTED else ""
            lines.append(f"  one-step differences (ties, near-ties) in {len(stepped)} tensors: "
                         f"{shown}{more}")
        lines += [f"  not forced: {t.name} ({t.note})" for t in self.tensors
                  if not t.forced and t.note]
        lines += [f"  graph output {name} has no {self.reference} counterpart"
                  for name in self.unmapped_outputs]
        if not self.tensors:
            lines.append(f"  FAIL: no tensor matched {self.reference}'s by name "
                         f"({self.unmatched_hint})")
        elif (bad := self.first_failure) is not None:
            failed = sum(not t.passed for t in self.tensors)
            lines.append(f"  FAIL: {failed} tensor(s) beyond {MAX_STEPS} step; first: "
                         + bad.describe())
            if bad.steps is not None and bad.steps.on_grid and cpu_has_vnni() is False:
                lines.append(f"  hint: {SATURATION_HINT}")
        else:
            lines.append(f"  PASS: every layer within {MAX_STEPS} step of {self.reference}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        first = self.first_failure
        return {"passed": bool(self), "samples": self.samples, "max_steps": MAX_STEPS,
                "reference": self.reference,
                "first_failure": first.to_dict() if first is not None else None,
                "unmapped_outputs": list(self.unmapped_outputs),
                "tensors": [t.to_dict() for t in self.tensors]}


def teacher_forced(model: onnx.ModelProto, traced: Any, samples: Sequence[dict[str, np.ndarray]],
                   *, device: str = "cpu", tolerance: Tolerance | None = None) -> ForcedReport:
    """Run onnxruntime (optimized: its int8 kernels) once per sample with every tensor MegEngine
    also has exposed, interpret `traced` replacing each such tensor by onnxruntime's value,
    and compare what MegEngine computed for it first."""
    from ..runtime.megengine_ref import interpret

    tolerance = tolerance or Tolerance()
    samples = list(samples)[:FORCED_SAMPLES]
    names = shared_names(model, interpret(traced, list(samples[0].values())))
    session = exposing_session(model, list(names.values()), device=device)
    grids = activation_grids(model)
    averaged = averaged_grids(model, grids)
    merged: dict[str, ForcedTensor] = {}
    unmapped: set[str] = set()
    for feeds in samples:
        forcing = _Forcing(run_model(session, feeds), names, grids, tolerance, averaged)
        run = interpret(traced, list(feeds.values()), replace=forcing)
        unmapped |= set(forcing.outputs(model, run.outputs))
        for name, found in forcing.found.items():
            origin = run.origins.get(forcing.megengine_name.get(name, ""))
            found = replace(found, origin=vars(origin)) if origin is not None else found
            merged[name] = merged[name].merged(found) if name in merged else found
    return ForcedReport(tuple(merged.values()), len(samples), tuple(sorted(unmapped)))


def deployed(traced: Any) -> tuple[Any, str]:
    """The reference a QDQ export of `traced` is judged against: `traced` itself, or, when its
    QAT modules only observe (calibration_qconfig: no fake quantization, so its forward is
    float), MegEngine's `quantize` of it, which is what the export deploys; and why."""
    import megengine.module.qat as QAT
    from megengine.quantization import quantize

    modules = [m for _, m in traced.named_modules() if isinstance(m, QAT.QATModule)]
    observing = [m for m in modules if getattr(m, "act_observer", None) is not None]
    if not observing or any(getattr(m, "act_fake_quant", None) is not None
                            or getattr(m, "weight_fake_quant", None) is not None
                            for m in modules):
        return traced, ""
    int8 = quantize(traced, inplace=False)
    int8.eval()
    return int8, ("its quantize() (calibration only: the QAT forward does not quantize, the "
                  "export deploys what quantize does)")


def shared_names(model: onnx.ModelProto, run: Any) -> dict[str, str]:
    """MegEngine tensor (its first name in the interpreter) -> the ONNX tensor holding it: the
    same name, or a name it takes leaving nested modules, if the ONNX node making it comes
    from the same MegEngine node (its `qualname` metadata, when present, matches)."""
    made = {out: node for node in model.graph.node for out in node.output if out}
    found: dict[str, str] = {}
    claimed: set[str] = set()
    for first in run.values:
        origin = run.origins.get(first)
        if origin is None:
            continue  # a graph input: the same feeds on both sides
        qualnames = {run.origins[name].qualname for name in [first, *run.aliases.get(first, [])]
                     if name in run.origins}
        for name in [first, *run.aliases.get(first, [])]:
            node = made.get(name)
            meta = {p.key: p.value for p in node.metadata_props} if node is not None else {}
            if (node is not None and name not in claimed
                    and meta.get("qualname", origin.qualname) in qualnames):
                found[first] = name
                claimed.add(name)
                break
    return found


class _Forcing:
    """The replace hook of megengine_ref's interpreter for one sample."""

    def __init__(self, onnx_values: dict[str, np.ndarray], names: dict[str, str],
                 grids: dict[str, float], tolerance: Tolerance,
                 averaged: dict[str, float] | None = None):
        self.onnx_values, self.names = onnx_values, names
        self.grids, self.tolerance = grids, tolerance
        self.averaged = averaged or {}
        self.found: dict[str, ForcedTensor] = {}   # by ONNX name
        self.megengine_name: dict[str, str] = {}   # ONNX name -> interpreter name
        self.unrounded: dict[int, np.ndarray] = {}  # id of a MegEngine qint8 value -> ORT's

    def __call__(self, megengine_name: str, value: Any, inputs: Sequence[Any] = ()) -> Any:
        name = self.names.get(megengine_name)
        got = self.onnx_values.get(name) if name is not None else None
        if got is None or name in self.found:
            return self._copy_of_unrounded(value, inputs)
        self.megengine_name[name] = megengine_name
        from ..runtime.megengine_ref import to_numpy

        reference = to_numpy(value)
        if reference.shape != got.shape:
            return None  # a name shared by accident: not the same tensor
        forced, note = _forced_value(value, got)
        self.found[name] = self.compare(name, reference, got, _scale_of(value),
                                        forced is not None, note)
        if forced is None and _scale_of(value) is not None:
            self.unrounded[id(value)] = got
        return forced

    def _copy_of_unrounded(self, value: Any, inputs: Sequence[Any]) -> Any:
        """A float tensor with no ONNX counterpart that copies (dequantizes, DequantStub) a
        qint8 one onnxruntime keeps unrounded takes onnxruntime's value: its float consumers
        then see what onnxruntime's see (transforms may drop the Identity that named it)."""
        import megengine as mge

        from ..runtime.megengine_ref import to_numpy

        sources = [v for v in inputs if id(v) in self.unrounded]
        if len(sources) != 1 or _scale_of(value) is not None or not np.issubdtype(
                np.dtype(value.dtype), np.floating):
            return None
        source, got = sources[0], self.unrounded[id(sources[0])]
        copied = to_numpy(value)
        if copied.shape != got.shape or not np.array_equal(copied, to_numpy(source)):
            return None
        return mge.Tensor(got.astype(value.dtype))

    def compare(self, name: str, reference: np.ndarray, got: np.ndarray,
                own_scale: float | None = None, forced: bool = True, note: str = ""
                ) -> ForcedTensor:
        """In steps on the ONNX tensor's grid; else, for a value MegEngine keeps quantized
        (int8 pooling) but onnxruntime has not rounded yet (its consumer does), in steps of
        MegEngine's scale after rounding it that way; else, for a float tensor averaged from
        quantized ones (a DequantStub after an unrounded pool), in their steps, off the grid;
        else at the float tolerance."""
        scale = self.grids.get(name, own_scale)
        if scale is not None:
            if name not in self.grids:
                got = _rounded(got, scale)
            return ForcedTensor(name, tuple(got.shape), scale, count_steps(reference, got, scale),
                                forced=forced, note=note)
        return judged(name, reference, got, self.grids, self.averaged, self.tolerance,
                      forced=forced, note=note)

    def outputs(self, model: onnx.ModelProto, outputs: list[np.ndarray]) -> list[str]:
        """Graph outputs not compared by name are compared by position (renamed outputs);
        returns those that cannot be."""
        missing = []
        for output, value in zip(model.graph.output, outputs):
            got = self.onnx_values.get(output.name)
            if output.name in self.found:
                continue
            if got is None or np.shape(got) != np.shape(value):
                missing.append(output.name)
                continue
            self.found[output.name] = self.compare(output.name, value, got, note="by position")
        return missing + [o.name for o in model.graph.output[len(outputs):]]


def judged(name: str, reference: np.ndarray, got: np.ndarray, grids: dict[str, float],
           averaged: dict[str, float], tolerance: Tolerance, **extra: Any) -> ForcedTensor:
    """One tensor by the rule its place in the ONNX graph gives: on a grid (`grids`, see
    runtime.steps.activation_grids), averaged from grids (`averaged`), or float."""
    shape = tuple(np.shape(got))
    if name in grids:
        return ForcedTensor(name, shape, grids[name], count_steps(reference, got, grids[name]),
                            **extra)
    if name in averaged:
        return ForcedTensor(name, shape, averaged[name],
                            count_steps(reference, got, averaged[name]), gridded=False, **extra)
    return ForcedTensor(name, shape, diff=diff_arrays(name, reference, got, tolerance,
                                                      detail=False), **extra)


def _rounded(values: np.ndarray, scale: float) -> np.ndarray:
    """Half away from zero on the grid of `scale`, as the exporter rounds an int8 average
    (converters/_qdq._round_to_grid, with its slack for float error at exact ties)."""
    from ..exporting.converters._qdq import TIE_SLACK

    scaled = values.astype(np.float64) / scale
    return np.sign(scaled) * np.floor(np.abs(scaled) + 0.5 + TIE_SLACK) * scale


def _scale_of(value: Any) -> float | None:
    from megengine.core.tensor.dtype import get_scale, is_quantize

    return float(get_scale(value.dtype)) if is_quantize(value.dtype) else None


def _forced_value(value: Any, got: np.ndarray) -> tuple[Any, str]:
    """onnxruntime's value as a MegEngine tensor of `value`'s dtype (quantized dtypes too),
    or None and why when it cannot stand in exactly."""
    import megengine as mge
    from megengine.core.tensor.dtype import get_scale, is_quantize

    if is_quantize(value.dtype):
        forced = mge.Tensor(got.astype(np.float32)).astype(value.dtype)
        error = np.abs(forced.astype("float32").numpy() - got).max(initial=0.0)
        if error > 1e-3 * get_scale(value.dtype):
            return None, "onnxruntime keeps it unrounded, its consumer rounds: compared rounded"
    elif np.issubdtype(np.dtype(value.dtype), np.floating):
        forced = mge.Tensor(got.astype(value.dtype))
    else:
        return None, ""   # shapes and indices: compared, MegEngine keeps its own
    # QAT modules read the quantization of their input from the tensor (fake_quant_bias
    # quantizes the bias at input scale x weight scale only when the input carries it)
    forced._qparams = getattr(value, "_qparams", None)
    return forced, ""
