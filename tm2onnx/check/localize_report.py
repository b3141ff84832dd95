"""What localization found: every matched tensor's error in topological order, and the first
tensor whose error is not explained by its inputs' error (printed as a few lines, or a dict)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runtime.compare import OutputDiff, Tolerance


@dataclass(frozen=True)
class TensorError:
    """One tensor both sides computed: its error, and the error carried in by its inputs."""
    diff: OutputDiff
    node: str                     # ONNX node producing it ('' for a graph input)
    op: str
    input_error: float            # worst scale-free error of the matched tensors feeding it
    inputs: tuple[tuple[str, str], ...] = ()   # (input name, its error summary)
    metadata: dict[str, str] = field(default_factory=dict)  # the ONNX node's metadata_props
    origin: dict[str, str] = field(default_factory=dict)    # MegEngine module/qualname/expr

    @property
    def name(self) -> str:
        return self.diff.name

    def to_dict(self) -> dict:
        return {"tensor": self.name, "node": self.node, "op": self.op,
                "error": self.diff.to_dict(), "input_error": self.input_error,
                "inputs": [{"name": n, "error": e} for n, e in self.inputs],
                "onnx_metadata": self.metadata, "megengine": self.origin}


@dataclass(frozen=True)
class Localization:
    subject: str
    reference: str
    tolerance: Tolerance
    tensors: tuple[TensorError, ...]   # matched tensors, topological order
    first: TensorError | None          # the first divergence, if any
    accumulated: bool = False          # errors exceed tolerance, but no single node explains it
    total: int = 0                     # tensors in the subject graph

    def __bool__(self) -> bool:
        return self.first is None and not self.accumulated

    def __str__(self) -> str:
        head = (f"localize: {self.subject} vs {self.reference}: {len(self.tensors)} of "
                f"{self.total} tensors matched, compared at {self.tolerance}")
        if not self.tensors:
            return (f"{head}\n  no tensor matched the reference by name: localization needs a "
                    f"tm2onnx export (against ONNX: tensor names both models keep)")
        if self.first is None:
            tail = ("every matched tensor within tolerance" if not self.accumulated else
                    "errors grow gradually: no single node explains them (try --rtol/--atol)")
            return f"{head}\n  {tail}"
        return "\n".join([head, *describe(self.first, self.accumulated)])

    def to_dict(self) -> dict:
        return {"subject": self.subject, "reference": self.reference,
                "matched": len(self.tensors), "total": self.total,
                "first_divergence": self.first.to_dict() if self.first is not None else None,
                "accumulated": self.accumulated,
                "tensors": [{"tensor": t.name, "node": t.node, "op": t.op,
                             "max_abs": t.diff.max_abs, "rel_error": t.diff.rel_error,
                             "passed": t.diff.passed} for t in self.tensors]}


def describe(found: TensorError, accumulated: bool) -> list[str]:
    diff = found.diff
    what = ("first tensor beyond tolerance (its inputs drift too)" if accumulated else
            "first divergence")
    lines = [f"  {what}: tensor {found.name!r} {list(diff.shape)} {diff.dtype}",
             f"  ONNX node:  {found.node or '(unnamed)'} ({found.op})"]
    if found.origin:  # the exporter's expr text names tensors as the ONNX graph does
        origin = {**found.origin, "expr": found.metadata.get("expr") or found.origin.get("expr")}
        lines.append("  MegEngine:  " + _pairs(origin, ("module", "qualname", "expr")))
    elif found.metadata:
        lines.append("  provenance: " + _pairs(found.metadata, ("module", "qualname", "expr",
                                                               "fused")))
    lines.append(f"  error:      {summary(diff)}  (allowed atol {diff.atol:.3g})")
    lines.append(f"  inputs:     worst input error {found.input_error:.3g} x max|ref|")
    lines.extend(f"    {name:<32} {text}" for name, text in found.inputs)
    return lines


def summary(diff: OutputDiff) -> str:
    return (f"max_abs {diff.max_abs:.3g}  mean_abs {diff.mean_abs:.3g}  "
            f"= {diff.rel_error:.3g} x max|ref| ({diff.scale:.3g})  cosine {diff.cosine:.6f}")


def _pairs(values: dict[str, str], keys: tuple[str, ...]) -> str:
    return "  ".join(f"{key}={values[key]}" for key in keys if values.get(key))
