"""Shared bench helpers: warm medians, result rows with PASS/MISS against a target, a table
printer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    median: float
    best: float
    runs: int

    def __str__(self) -> str:
        return f"median {self.median * 1e3:.1f} ms, best {self.best * 1e3:.1f} ms, n={self.runs}"


def timed(fn: Callable[[], object], *, runs: int, warmup: int = 1) -> Timing:
    """Median wall time of `runs` calls after `warmup` untimed ones (medians resist noise from
    other processes on a shared machine better than means)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples), min(samples), runs)


@dataclass(frozen=True)
class Row:
    """One printed line; `target` and `passed` are None for plain measurements."""

    section: str
    metric: str
    value: str
    target: str | None = None
    passed: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.passed is None else ("PASS" if self.passed else "MISS")


def check(section: str, metric: str, value: str, ok: bool, target: str) -> Row:
    return Row(section, metric, value, target, ok)


def print_table(rows: list[Row]) -> None:
    widths = [max(len(getattr(r, field) or "") for r in rows) for field in
              ("section", "metric", "value", "target")]
    header = ("section", "metric", "value", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  result"
    print(line)
    print("-" * len(line))
    for r in rows:
        cells = (r.section, r.metric, r.value, r.target or "")
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + r.verdict)
    verdicts = [r.passed for r in rows if r.passed is not None]
    print(f"\n{sum(verdicts)}/{len(verdicts)} targets met")

