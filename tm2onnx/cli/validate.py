"""`tm2onnx validate`: options and handler (registered in commands.py). The ONNX-only path
(`--against`) never imports MegEngine."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import Tm2OnnxError
from .common import EXIT_MISMATCH, EXIT_OK, Progress, csv

HELP = ("compare an ONNX model with MegEngine (or another ONNX model) on seeded or given "
        "inputs; on a difference, name the first tensor that diverges")


def validate_arguments(parser: argparse.ArgumentParser) -> None:
    from .common import _validation_options
    from .options import add_load_options

    parser.add_argument("model", help="ONNX model to check (or a .tm: exported in memory)")
    reference = parser.add_mutually_exclusive_group()
    reference.add_argument("--tm", metavar="MODEL.tm",
                           help="MegEngine reference (a pickled TracedModule)")
    reference.add_argument("--against", metavar="REF.onnx", help="another ONNX model as reference")
    _validation_options(parser)
    _runtime_options(parser)
    group = parser.add_argument_group("inputs and report")
    group.add_argument("--reference-device", choices=["cpu", "cuda", "auto"],
                       help="provider for the --against model (default: --device)")
    group.add_argument("--inputs", metavar="FILE.npz|A.npy,B.npy",
                       help="feeds from files: npz keys = input names (or arr_0... by "
                            "position), npy files by position; a leading N where the model "
                            "takes 1 runs N samples")
    group.add_argument("--runs", type=int, default=1, metavar="K",
                       help="random feeds with seeds SEED..SEED+K-1; worst case reported "
                            "(quantized models: end-to-end steps and top-1 over all K, the "
                            "per-layer check on the first 8)")
    group.add_argument("--int-range", metavar="LO,HI",
                       help="integer inputs drawn from [LO, HI) (default: the size of the "
                            "table they index, else [0, 10))")
    group.add_argument("--strict", action="store_true",
                       help="count WARNINGs (empty/constant outputs, all-zero inputs) as failures")
    group.add_argument("--localize", action="store_true",
                       help="always find the first diverging tensor (default: only on FAIL)")
    group.add_argument("--no-localize", action="store_true", help="never localize")
    group.add_argument("--json", action="store_true", help="print the report as JSON")
    group.add_argument("--plot", metavar="FILE.png|svg",
                       help="draw every matched tensor's error along the graph (needs "
                            "matplotlib: pip install 'tm2onnx[plot]'); implies --localize")
    add_load_options(parser)


def _runtime_options(parser: argparse.ArgumentParser) -> None:
    from ..runtime.toolchains import PRECISIONS, TOOLCHAINS

    group = parser.add_argument_group("other toolchains")
    group.add_argument("--runtime", choices=sorted(TOOLCHAINS),
                       help="also run the model on this toolchain (an optional extra: pip "
                            "install 'tm2onnx[NAME]') and compare it with onnxruntime and the "
                            "reference; without --tm/--against the reference is onnxruntime "
                            "with optimizations off")
    group.add_argument("--precision", choices=PRECISIONS,
                       help="the toolchain's inference precision (f32; OpenVINO also f16/bf16)")


def validate_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword options of tm2onnx.validate.against_* that the CLI flags give."""
    from .common import _tolerances

    if args.runs < 1:
        raise Tm2OnnxError(f"--runs must be at least 1, got {args.runs}")
    if args.inputs and (args.runs != 1 or args.int_range):
        raise Tm2OnnxError("--runs and --int-range shape random feeds; --inputs gives the feeds",
                           hint="drop one of them")
    if args.localize and args.no_localize:
        raise Tm2OnnxError("--localize and --no-localize contradict each other")
    localize: bool | str = "auto"
    if args.localize or args.plot:
        localize = True
    elif args.no_localize:
        localize = False
    options = _tolerances(args)
    options.update(runs=args.runs, inputs=args.inputs, int_range=_int_range(args.int_range),
                   strict=args.strict, localize=localize)
    return options


def _int_range(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = csv(text) or []
    try:
        low, high = (int(part) for part in parts)
    except ValueError as err:
        raise Tm2OnnxError(f"--int-range {text!r} is not LO,HI", hint="e.g. --int-range 0,2") \
            from err
    if high <= low:
        raise Tm2OnnxError(f"--int-range {text!r} is empty", hint="HI must exceed LO")
    return low, high


def validate_command(args: argparse.Namespace, progress: Progress) -> int:
    from ..check import validate
    from .common import load_onnx

    if args.plot:
        from ..check.localize_plot import check_plotting

        check_plotting(args.plot)
    options = validate_options(args)
    if args.precision and not args.runtime:
        raise Tm2OnnxError("--precision applies to --runtime only",
                           hint="add --runtime NAME (onnxruntime runs the model as written)")
    if args.runtime and not (args.tm or args.against or args.model.endswith(".tm")):
        progress.step(f"running {args.model} in onnxruntime and {args.runtime}")
        model = load_onnx(args.model)
        options["toolchain"] = _toolchain(args, options, args.model, "")
        report = validate.against_onnx(model, model, subject=args.model,
                                       reference=f"{args.model}, optimizations off",
                                       **options)
    elif args.against:
        progress.step(f"running {args.model} and {args.against} in onnxruntime")
        if args.runtime:
            options["toolchain"] = _toolchain(args, options, args.model, args.against)
        report = validate.against_onnx(load_onnx(args.model), load_onnx(args.against),
                                       subject=args.model, reference=args.against,
                                       reference_device=args.reference_device, **options)
    else:
        report = _with_megengine(args, progress, options)
    if args.plot and report.localization is not None:
        from ..check.localize_plot import plot

        plot(report.localization, args.plot)
        progress.step(f"wrote {args.plot}")
    sys.stdout.write((report.to_json() if args.json else str(report)) + "\n")
    return EXIT_OK if report else EXIT_MISMATCH


def _toolchain(args: argparse.Namespace, options: dict, model: Any, reference: str) -> Any:
    from ..check.validate_toolchain import ToolchainRun

    return ToolchainRun(args.runtime, model, precision=args.precision or "f32",
                        reference=reference, rtol=options["rtol"], atol=options["atol"],
                        atol_scale=options["atol_scale"])


def _with_megengine(args: argparse.Namespace, progress: Progress, options: dict) -> Any:
    from .._quiet import silence_megengine_banner
    from ..check.validate import against_megengine
    from ..exporting.exporter import export
    from ..runtime.inputs import input_specs
    from .common import load_onnx, require_megengine
    from .options import load_tm

    tm_path = args.tm or (args.model if args.model.endswith(".tm") else None)
    if tm_path is None:
        raise Tm2OnnxError("no reference given", where=args.model,
                           hint="add --tm MODEL.tm (MegEngine) or --against REF.onnx")
    if args.reference_device:
        raise Tm2OnnxError("--reference-device applies to --against only",
                           hint="MegEngine runs on its own device")
    require_megengine("validate --tm")
    silence_megengine_banner()
    progress.step(f"loading {tm_path}")
    traced = load_tm(tm_path, args)
    model = load_onnx(args.model) if args.model != tm_path else export(traced, source=tm_path)
    if len(input_specs(model)) != len(traced.graph.inputs[1:]):
        raise Tm2OnnxError(f"{args.model} has {len(input_specs(model))} inputs, {tm_path} has "
                           f"{len(traced.graph.inputs[1:])}", where=args.model,
                           hint="compare a model with the .tm it was exported from")
    if args.runtime:
        source = args.model if args.model != tm_path else model
        options["toolchain"] = _toolchain(args, options, source, "MegEngine")
    progress.step("running onnxruntime and MegEngine" + (f" and {args.runtime}"
                                                         if args.runtime else ""))
    return against_megengine(model, traced, subject=args.model,
                             reference=f"MegEngine ({tm_path})", **options)
