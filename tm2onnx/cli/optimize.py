"""`tm2onnx optimize`: graph transforms on any ONNX model, optionally validated before/after
every transform; prints the op-count table."""

from __future__ import annotations

import argparse
import sys

from ..errors import Tm2OnnxError
from .common import (
    EXIT_MISMATCH,
    EXIT_OK,
    Progress,
    _dims,
    _tolerances,
    _validation_options,
    csv,
    load_checked_onnx,
)
from .options import add_write_options, output_target, write_model
from .passes import NOT_COMPARABLE, add_pass_options, expanded_passes, run_passes

HELP = "apply graph transforms to any ONNX model"


def optimize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="any ONNX model")
    parser.add_argument("-o", "--output", required=True, help="ONNX file to write")
    parser.add_argument("--validate", action="store_true",
                        help="run onnxruntime before and after every transform; fail on drift")
    group = parser.add_argument_group("output conventions")
    group.add_argument("--input-shape", action="append", metavar="NAME=D,D,..",
                       help="bind an input's shape before the transforms (repeatable), e.g. "
                            "x=1,3,224,224; a word keeps a dim symbolic")
    group.add_argument("--opset", type=int, metavar="N",
                       help="convert to opset N (onnx's version converter) after the transforms")
    group.add_argument("--target-ir", type=int, metavar="N",
                       help="stamp IR version N (default: the input's, raised only if the "
                            "opset needs it), for older runtimes")
    group.add_argument("--json", action="store_true",
                       help="print the op-count table as JSON (other lines go to stderr)")
    add_pass_options(parser)
    _validation_options(parser)
    add_write_options(parser)


def optimize_command(args: argparse.Namespace, progress: Progress) -> int:
    from .. import optimize

    target = output_target(args, [args.model])
    if not (csv(args.passes) or args.opset or args.target_ir or args.input_shape):
        raise Tm2OnnxError("no --passes given", hint="e.g. --passes deploy "
                           "(list them with 'tm2onnx transforms')")
    loaded, external = load_checked_onnx(args.model)
    original = optimize.bind_input_shapes(
        loaded, optimize.parse_input_shapes(args.input_shape), args.model)
    if args.validate:
        from ..runtime.inputs import fill_dims

        # Said before any transform runs: every check below feeds these sizes.
        if filled := fill_dims(original, _dims(args))[1]:
            progress.step("validating with symbolic dims filled: " + ", ".join(
                f"{name}={size}" for name, size in filled.items()) + " (--dim NAME=SIZE sets them)")
    model = run_passes(original, args, progress, args.validate)
    model = optimize.retarget(model, opset=args.opset, ir_version=args.target_ir,
                              source=args.model)
    model = optimize.with_value_info(model)
    log = sys.stderr if args.json else sys.stdout
    if args.validate:
        from ..check.validate import against_onnx

        if not NOT_COMPARABLE.intersection(expanded_passes(args)):
            report = against_onnx(model, original, subject=str(target), reference=args.model,
                                  **_tolerances(args, expanded_passes(args)))
            print(report, file=log)
            if not report:
                return EXIT_MISMATCH
    write_model(model, args, input_external=external)
    rows = optimize.op_count_rows(loaded, model)
    print(f"wrote {target}: {len(loaded.graph.node)} -> {len(model.graph.node)} nodes", file=log)
    print(optimize.op_count_json(rows, input=args.model, output=str(target)) if args.json
          else optimize.op_count_table(rows))
    return EXIT_OK
