"""CLI options that guard the user: values checked before any work starts, safe-loading and
safe-writing flags, and the one place the CLI reads a .tm or writes a model."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import onnx

from ..errors import Tm2OnnxError

MAX_SEED = 2**63 - 1
MAX_DIM = 2**20  # a symbolic dim bound past a million elements is a typo, not a test input


def add_load_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("loading a .tm (see docs/safety.md)")
    group.add_argument("--trust-module", action="append", metavar="PKG.MOD", default=[],
                       help="allow custom classes from this module (and its submodules) in "
                            "the pickle (repeatable)")
    group.add_argument("--unsafe-load", action="store_true",
                       help="plain pickle: runs whatever the file holds (trusted files only)")


def add_write_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("writing")
    group.add_argument("--in-place", action="store_true",
                       help="allow -o to be the input file itself")
    external = group.add_mutually_exclusive_group()
    external.add_argument("--external-data", dest="external_data", action="store_true",
                          default=None, help="weights to OUTPUT.data beside the model "
                          "(automatic past protobuf's 2 GB limit, and for inputs that had it)")
    external.add_argument("--no-external-data", dest="external_data", action="store_false",
                          help="all weights inline (fails past 2 GB)")


def check_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range option values before any model is read (each a one-line error)."""
    for name in ("rtol", "atol"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise Tm2OnnxError(f"--{name} {value} is not a finite number >= 0",
                               hint=f"e.g. --{name} 1e-4")
    seed = getattr(args, "seed", None)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise Tm2OnnxError(f"--seed {seed} is out of range", hint=f"use 0..{MAX_SEED}")
    for item in getattr(args, "dim", None) or []:
        _check_dim(item)
    for name in ("fp16_min_params",):
        value = getattr(args, name, None)
        if value is not None and value < 0:
            raise Tm2OnnxError(f"--{name.replace('_', '-')} {value} is negative")
    if getattr(args, "device", None) == "cuda":
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Tm2OnnxError("--device cuda: onnxruntime has no CUDAExecutionProvider here",
                               hint="pip install 'tm2onnx[gpu]' on a CUDA machine, or drop "
                                    "--device cuda")


def _check_dim(item: str) -> None:
    name, _, size = item.partition("=")
    try:
        value = int(size)
    except ValueError:
        value = None
    if not name or value is None or not 1 <= value <= MAX_DIM:
        raise Tm2OnnxError(f"--dim {item!r} is not NAME=SIZE with 1 <= SIZE <= {MAX_DIM}",
                           hint="e.g. --dim batch=4 (a size-0 dim would compare empty "
                                "tensors and pass vacuously)")


def load_tm(path: str, args: argparse.Namespace) -> Any:
    """The TracedModule at `path`, loaded as --trust-module/--unsafe-load allow."""
    from ..load.loading import load_traced

    return load_traced(path, allow_modules=getattr(args, "trust_module", None) or (),
                       unsafe=bool(getattr(args, "unsafe_load", False)))


def output_target(args: argparse.Namespace, inputs: Sequence[str]) -> Any:
    """-o checked before any work: not an input (unless --in-place), a regular file or new."""
    from ..fileio import check_output

    return check_output(args.output, [i for i in inputs if i],
                        in_place=bool(getattr(args, "in_place", False)))


def write_model(model: onnx.ModelProto, args: argparse.Namespace, *,
                input_external: bool = False) -> bool:
    """Check `model` and write it to -o; external data as asked, else as the input had it
    (or past 2 GB). Returns whether the weights went to external data."""
    from ..check.checking import check_model
    from ..fileio import check_output, save_onnx

    check_model(model, where=str(args.output), produced=True)
    check_output(args.output)  # again: the path may have changed while we worked
    external = getattr(args, "external_data", None)
    if external is None and input_external:
        external = True
    return save_onnx(model, args.output, external_data=external)
