"""What every subcommand shares: exit codes, `Progress`, option-value parsing, and loading the
ONNX model a command reads."""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from ..errors import Tm2OnnxError

EXIT_OK, EXIT_MISMATCH, EXIT_ERROR = 0, 1, 2
# (rtol, atol as a fraction of each output's max|ref|): fp32 through 50 layers summed in
# another order. Transforms that trade precision, and the tolerance their results are checked
# at (the guide checks its fp16 Linear at atol 5e-2).
DEFAULT_TOLERANCE = (1e-4, 1e-4)
APPROXIMATE = {"fp16": (1e-2, 5e-2), "fp16-linear": (1e-2, 5e-2)}


class Progress:
    """Step lines with timings on stderr, so stdout stays the report."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.start = time.perf_counter()

    def step(self, message: str) -> None:
        if not self.quiet:
            sys.stdout.flush()  # keep the report and the progress lines in order on a terminal
            elapsed = time.perf_counter() - self.start
            print(f"[{elapsed:6.2f}s] {message}", file=sys.stderr, flush=True)


def parse_key_values(items: Sequence[str] | None, what: str) -> dict[str, str]:
    """['a=b', 'c=d'] -> {'a': 'b', 'c': 'd'}, with a clear error for a malformed item."""
    result: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise Tm2OnnxError(f"{what} {item!r} is not OLD=NEW", hint=f"e.g. --{what} out0=y")
        result[key] = value
    return result


def csv(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def out_path(path: str) -> Path:
    target = Path(path)
    if target.is_dir():
        raise Tm2OnnxError("output path is a directory", where=path, hint="give a file name")
    return target


def _validation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("validation")
    group.add_argument("--seed", type=int, default=0, help="seed of the random inputs (0)")
    group.add_argument("--rtol", type=float, help="relative tolerance (1e-4; 1e-2 after fp16)")
    group.add_argument("--atol", type=float,
                       help="absolute tolerance (default: 1e-4 x each output's max|ref|; "
                            "5e-2 x after fp16)")
    group.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                       help="onnxruntime execution provider; auto = cuda when present (cpu)")
    group.add_argument("--dim", action="append", metavar="NAME=SIZE",
                       help="size for a symbolic input dim, e.g. --dim batch=4")



def _dims(args: argparse.Namespace) -> dict[str, int]:
    dims = parse_key_values(args.dim, "dim")
    try:
        return {name: int(size) for name, size in dims.items()}
    except ValueError as err:
        raise Tm2OnnxError(f"--dim sizes must be integers: {args.dim}") from err



def _tolerances(args: argparse.Namespace, passes: list[str] | tuple[str, ...] = ()
                ) -> dict[str, Any]:
    """Explicit --rtol/--atol win (--atol is absolute); otherwise the loosest tolerance any of
    `passes` needs, atol scaled to each output's magnitude."""
    rtol, atol_scale = DEFAULT_TOLERANCE
    for name in passes:
        rtol, atol_scale = (max(a, b) for a, b in
                            zip((rtol, atol_scale), APPROXIMATE.get(name, (0, 0))))
    return {"seed": args.seed, "rtol": rtol if args.rtol is None else args.rtol,
            "atol": args.atol, "atol_scale": atol_scale, "device": args.device,
            "dims": _dims(args)}



def require_megengine(what: str) -> None:
    """One line naming what to install when MegEngine is missing (the core package runs on any
    Python; MegEngine 1.13 only on 3.10)."""
    try:
        found = importlib.util.find_spec("megengine") is not None
    except (ImportError, ValueError):  # ValueError: a stub module without a spec
        found = False
    if not found:
        raise Tm2OnnxError(f"{what} needs MegEngine, which is not installed",
                           hint='on Python 3.10: pip install "tm2onnx[megengine]" (MegEngine '
                                '1.13 ships CPython 3.10 wheels only); ONNX-side commands '
                                'work without it')



def load_onnx(path: str) -> onnx.ModelProto:
    """The model (external data read in), refused up front when it fails onnx.checker."""
    return load_checked_onnx(path)[0]



def load_checked_onnx(path: str) -> tuple[onnx.ModelProto, bool]:
    from ..check.checking import check_model
    from ..fileio import load_onnx as read_onnx

    model, external = read_onnx(path)
    check_model(model, where=path)
    return model, external
