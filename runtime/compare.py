"""Compare two sets of named outputs (Polygraphy's idea, kept small): per output the max/mean
absolute and relative error, cosine similarity, top-1 agreement for (N, C) scores, and the
tolerance that would have been needed to pass.

Tolerance rule: an element passes when |got - ref| <= atol + rtol * |ref|. By default
rtol = 1e-4 and atol = 1e-4 * max|ref| of that output (its magnitude), so an output in the
millions is judged at the same relative precision as one near 1; an explicit `atol` is absolute."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

DEFAULT_RTOL = 1e-4
DEFAULT_ATOL_SCALE = 1e-4


@dataclass(frozen=True)
class Tolerance:
    rtol: float = DEFAULT_RTOL
    atol: float | None = None  # absolute; None: atol_scale * max|reference| per output
    atol_scale: float = DEFAULT_ATOL_SCALE

    def atol_for(self, scale: float) -> float:
        return self.atol if self.atol is not None else self.atol_scale * scale

    def __str__(self) -> str:
        atol = f"{self.atol:g}" if self.atol is not None else f"{self.atol_scale:g}*max|ref|"
        return f"atol={atol}, rtol={self.rtol:g}"


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
    scale: float = 0.0          # max |reference|, what a default atol is relative to
    atol: float = 0.0           # the absolute tolerance applied
    needed_atol: float = 0.0    # the smallest atol that passes at the same rtol
    cosine: float = 1.0
    top1: float | None = None   # argmax agreement over rows of an (N, C) output
    warning: str = ""           # the comparison proves little (empty or constant output)

    @property
    def rel_error(self) -> float:
        """max_abs relative to the output's magnitude: the scale-free error localization uses."""
        return self.max_abs / self.scale if self.scale > 0 else (0.0 if self.max_abs == 0
                                                                 else np.inf)

    def row(self) -> str:
        status = "ok" if self.passed else "FAIL"
        detail = "  ".join(part for part in (self.problem, self.warning) if part)
        top1 = f"{self.top1:>6.1%}" if self.top1 is not None else f"{'-':>6}"
        return (f"{self.name:<28} {self.shape!s:<18} {self.dtype:<8} {self.max_abs:>9.3g} "
                f"{self.mean_abs:>9.3g} {self.max_rel:>9.3g} {self.cosine:>9.6f} {top1} "
                f"{self.atol:>9.3g} {self.needed_atol:>9.3g}  {status}"
                + (f"  {detail}" if detail else ""))

    def to_dict(self) -> dict:
        return {key: _jsonable(value) for key, value in asdict(self).items()}


HEADER = (f"{'output':<28} {'shape':<18} {'dtype':<8} {'max_abs':>9} {'mean_abs':>9} "
          f"{'max_rel':>9} {'cosine':>9} {'top1':>6} {'atol':>9} {'needed':>9}")


@dataclass(frozen=True)
class Comparison:
    diffs: tuple[OutputDiff, ...]
    tolerance: Tolerance

    @property
    def rtol(self) -> float:
        return self.tolerance.rtol

    @property
    def atol(self) -> float | None:
        return self.tolerance.atol

    @property
    def warnings(self) -> list[str]:
        return [f"{d.name}: {d.warning}" for d in self.diffs if d.warning]

    def __bool__(self) -> bool:
        return all(d.passed for d in self.diffs)

    def __str__(self) -> str:
        verdict = "PASS" if self else "FAIL"
        failed = sum(not d.passed for d in self.diffs)
        summary = (f"{verdict}: {len(self.diffs) - failed}/{len(self.diffs)} outputs within "
                   f"tolerance ({self.tolerance})")
        return "\n".join([HEADER, *(d.row() for d in self.diffs), summary])

    def to_dict(self) -> dict:
        return {"passed": bool(self), "tolerance": asdict(self.tolerance),
                "outputs": [d.to_dict() for d in self.diffs]}


def compare(reference: dict[str, np.ndarray], actual: dict[str, np.ndarray], *,
            rtol: float = DEFAULT_RTOL, atol: float | None = None,
            atol_scale: float = DEFAULT_ATOL_SCALE,
            names: dict[str, str] | None = None) -> Comparison:
    """Pass when |actual - reference| <= atol + rtol*|reference| everywhere (numpy's isclose);
    `atol=None` scales it to each output: atol_scale * max|reference|.

    `names` maps reference names to actual names when they differ (renamed outputs)."""
    names = names or {}
    tolerance = Tolerance(rtol, atol, atol_scale)
    diffs = [diff_arrays(name, np.asarray(ref), actual.get(names.get(name, name)), tolerance)
             for name, ref in reference.items()]
    return Comparison(tuple(diffs), tolerance)


def diff_arrays(name: str, ref: np.ndarray, got: np.ndarray | None,
                tolerance: Tolerance, *, detail: bool = True) -> OutputDiff:
    """The statistics of one output, or of one intermediate tensor for localization: there
    `detail=False` skips max_rel (NaN), top-1 and the constant-output check, a third of the
    cost on every tensor of a large network."""
    shape, dtype = tuple(ref.shape), str(ref.dtype)
    if got is None:
        return OutputDiff(name, shape, dtype, np.inf, np.inf, np.inf, False,
                          "missing in actual outputs", cosine=0.0)
    got = np.asarray(got)
    if got.shape != ref.shape:
        return OutputDiff(name, shape, dtype, np.inf, np.inf, np.inf, False,
                          f"shape {got.shape} != {ref.shape}", cosine=0.0)
    if ref.size == 0:
        return OutputDiff(name, shape, dtype, 0.0, 0.0, 0.0, True,
                          warning="empty output: nothing was compared")
    work = ref.dtype if ref.dtype in (np.float32, np.float64) else np.float64
    ref_w, got_w = ref.astype(work, copy=False), got.astype(work, copy=False)
    abs_err = np.abs(got_w - ref_w)
    magnitude = np.abs(ref_w)
    if not (np.isfinite(ref_w).all() and np.isfinite(got_w).all()):  # the rare, slow path
        both_nan = np.isnan(ref_w) & np.isnan(got_w)  # NaN where the reference has NaN matches
        abs_err = np.nan_to_num(np.where(both_nan, 0.0, abs_err), nan=np.inf)
        magnitude = np.nan_to_num(magnitude, nan=0.0, posinf=0.0, neginf=0.0)
    scale = float(magnitude.max())
    atol = tolerance.atol_for(scale)
    slack = abs_err - tolerance.rtol * magnitude
    max_abs, worst_slack = float(abs_err.max()), float(slack.max())
    max_rel = float("nan")
    if detail:
        max_rel = float((abs_err / np.maximum(magnitude, np.finfo(work).tiny)).max()
                        if max_abs else 0.0)
    problem = "" if got.dtype == ref.dtype else f"dtype {got.dtype} != {ref.dtype}"
    return OutputDiff(name, shape, dtype, max_abs, float(abs_err.mean(dtype=np.float64)),
                      max_rel, worst_slack <= atol, problem, scale, atol, max(worst_slack, 0.0),
                      _cosine(ref_w, got_w), _top1(ref, got) if detail else None,
                      _constant_warning(ref_w) if detail else "")


def merge(first: Comparison, second: Comparison, *, runs: int = 1) -> Comparison:
    """Worst case output by output of `first` (already merged over `runs` runs) and one more
    run: max errors, min cosine/top-1, mean of the mean errors."""
    by_name = {d.name: d for d in second.diffs}
    return Comparison(tuple(_merge_diff(d, by_name.get(d.name, d), runs) for d in first.diffs),
                      first.tolerance)


def _merge_diff(a: OutputDiff, b: OutputDiff, runs: int) -> OutputDiff:
    top1 = None if a.top1 is None or b.top1 is None else min(a.top1, b.top1)
    warning = a.warning if a.warning == b.warning else ""  # constant in every run, or not
    return replace(a, max_abs=max(a.max_abs, b.max_abs), mean_abs=(a.mean_abs * runs + b.mean_abs) / (runs + 1),
                   max_rel=max(a.max_rel, b.max_rel), passed=a.passed and b.passed,
                   problem=a.problem or b.problem, scale=max(a.scale, b.scale),
                   atol=min(a.atol, b.atol), needed_atol=max(a.needed_atol, b.needed_atol),
                   cosine=min(a.cosine, b.cosine), top1=top1, warning=warning)


def _cosine(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.ravel(), got.ravel()
    if not (np.isfinite(ref).all() and np.isfinite(got).all()):
        ref, got = np.nan_to_num(ref), np.nan_to_num(got)
    ref_norm, got_norm = float(np.linalg.norm(ref)), float(np.linalg.norm(got))
    if ref_norm == 0.0 or got_norm == 0.0:
        return 1.0 if ref_norm == got_norm else 0.0
    return float(np.dot(ref, got) / ref_norm / got_norm)


def _top1(ref: np.ndarray, got: np.ndarray) -> float | None:
    if ref.ndim != 2 or ref.shape[1] < 2 or not np.issubdtype(ref.dtype, np.floating):
        return None
    return float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))


def _constant_warning(ref: np.ndarray) -> str:
    if ref.size < 2:
        return ""
    finite = ref if np.isfinite(ref).all() else ref[np.isfinite(ref)]
    if finite.size and finite.min() == finite.max():
        return f"constant output ({finite.flat[0]:g} everywhere): proves little"
    return ""


def _jsonable(value):
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
