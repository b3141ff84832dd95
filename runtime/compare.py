"""Compare two sets of named outputs (Polygraphy's idea, kept small): per output the max/mean
absolute and relative error and the tolerance that would have been needed to pass."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OutputDiff:
    name: str
    shape: tuple[int, ...]
    dtype: str
    max_abs: float
    mean_abs: float
    max_rel: float
    passed: bool
    problem: str = ""

    def row(self) -> str:
        status = "ok" if self.passed else "FAIL"
        detail = f"  {self.problem}" if self.problem else ""
        return (f"{self.name:<28} {self.shape!s:<20} {self.dtype:<8} {self.max_abs:>10.3g} "
                f"{self.mean_abs:>10.3g} {self.max_rel:>10.3g}  {status}{detail}")


@dataclass(frozen=True)
class Comparison:
    diffs: tuple[OutputDiff, ...]
    rtol: float
    atol: float

    def __bool__(self) -> bool:
        return all(d.passed for d in self.diffs)

    def __str__(self) -> str:
        header = (f"{'output':<28} {'shape':<20} {'dtype':<8} {'max_abs':>10} {'mean_abs':>10} "
                  f"{'max_rel':>10}  (atol={self.atol:g}, rtol={self.rtol:g})")
        verdict = "PASS" if self else "FAIL"
        failed = sum(not d.passed for d in self.diffs)
        summary = f"{verdict}: {len(self.diffs) - failed}/{len(self.diffs)} outputs within tolerance"
        return "\n".join([header, *(d.row() for d in self.diffs), summary])


def compare(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], *,
            rtol: float = 1e-4, atol: float = 1e-5,
            names: dict[str, str] | None = None) -> Comparison:
    """Pass when |actual - reference| <= atol + rtol*|reference| everywhere (numpy's isclose).

    `names` maps reference names to actual names when they differ (renamed outputs)."""
    names = names or {}
    diffs = [_diff(name, np.asarray(ref), actual.get(names.get(name, name)), rtol, atol)
             for name, ref in reference.items()]
    return Comparison(tuple(diffs), rtol, atol)


def _diff(name: str, ref: np.ndarray, got: np.ndarray | None, rtol: float,
          atol: float) -> OutputDiff:
    if got is None:
        return OutputDiff(name, tuple(ref.shape), str(ref.dtype), np.inf, np.inf, np.inf, False,
                          "missing in actual outputs")
    got = np.asarray(got)
    if got.shape != ref.shape:
        return OutputDiff(name, tuple(ref.shape), str(ref.dtype), np.inf, np.inf, np.inf, False,
                          f"shape {got.shape} != {ref.shape}")
    if ref.size == 0:
        return OutputDiff(name, tuple(ref.shape), str(ref.dtype), 0.0, 0.0, 0.0, True)
    ref64 = ref.astype(np.float64)
    got64 = got.astype(np.float64)
    both_nan = np.isnan(ref64) & np.isnan(got64)  # NaN where the reference has NaN matches
    abs_err = np.where(both_nan, 0.0, np.abs(got64 - ref64))
    abs_err = np.nan_to_num(abs_err, nan=np.inf)
    magnitude = np.nan_to_num(np.abs(ref64), nan=0.0)
    rel_err = abs_err / np.maximum(magnitude, np.finfo(np.float64).tiny)
    passed = bool(np.all(abs_err <= atol + rtol * magnitude))
    problem = "" if got.dtype == ref.dtype else f"dtype {got.dtype} != {ref.dtype}"
    return OutputDiff(name, tuple(ref.shape), str(ref.dtype), float(abs_err.max()),
                      float(abs_err.mean()), float(rel_err.max()), passed, problem)
