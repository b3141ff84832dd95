"""Draw each matched tensor's error along the graph (log scale), the first divergence marked.
Needs matplotlib (the `plot` extra); without it a one-line error before anything runs."""

from __future__ import annotations

from pathlib import Path

from ..errors import Tm2OnnxError
from .localize_report import Localization

FORMATS = (".png", ".svg")


def check_plotting(path: str) -> None:
    """Fail early: a bad suffix or missing matplotlib should not cost a validation run."""
    if Path(path).suffix.lower() not in FORMATS:
        raise Tm2OnnxError("--plot writes .png or .svg", where=path)
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise Tm2OnnxError("--plot needs matplotlib",
                           hint="pip install 'tm2onnx[plot]' (or matplotlib)") from err


def plot(found: Localization, path: str) -> None:
    check_plotting(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    errors = [max(t.diff.rel_error, 1e-12) for t in found.tensors]
    figure, axes = plt.subplots(figsize=(max(6.0, len(errors) / 12), 3.5))
    axes.semilogy(range(len(errors)), errors, marker=".", linewidth=0.8)
    tolerance = found.tolerance.atol_scale if found.tolerance.atol is None else None
    if tolerance:
        axes.axhline(tolerance, color="gray", linestyle=":", label="default atol / max|ref|")
        axes.legend(loc="lower right", fontsize=8)
    axes.set_ylim(min(min(errors, default=1.0), tolerance or 1.0) / 10,
                  max(max(errors, default=1.0), tolerance or 1.0) * 10)
    axes.set_xlabel("matched tensor (topological order)")
    axes.set_ylabel("max_abs / max|ref|")
    axes.set_title(f"{found.subject} vs {found.reference}")
    if found.first is not None:
        index = next(i for i, t in enumerate(found.tensors) if t is found.first)
        axes.axvline(index, color="red", linestyle="--")
        axes.annotate(f"{found.first.name} ({found.first.op})", (index, errors[index]),
                      color="red", fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
