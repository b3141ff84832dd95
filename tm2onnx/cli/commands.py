"""The CLI's subcommands, registered by name: each is (help, add_arguments, handler)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable
from typing import Any

import onnx
import onnx.numpy_helper

from .._quiet import silence_megengine_banner
from ..check.checking import check_model_for_target
from ..errors import OutputMismatch, RunError, Tm2OnnxError
from ..exporting.exporter import QDQ_ACTIVATIONS, QDQ_WEIGHTS
from ..exporting.targets import DEFAULT_TARGET, TARGETS, targets_help
from .bench import bench_arguments, bench_command
from .common import (
    EXIT_ERROR,
    EXIT_MISMATCH,
    EXIT_OK,
    Progress,
    _dims,
    _tolerances,
    _validation_options,
    csv,
    load_checked_onnx,
    load_onnx,
    parse_key_values,
    require_megengine,
)
from .options import add_load_options, add_write_options, load_tm, output_target, write_model
from .validate import validate_arguments, validate_command

COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}
# `wrap` changes the function on purpose: its result is not compared with the model before.
NOT_COMPARABLE = {"wrap"}


def command(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    def decorator(handler: Callable[[argparse.Namespace, Progress], int]):
        COMMANDS[name] = (help_text, add_arguments, handler)
        return handler
    return decorator


# ---- shared option groups ----------------------------------------------------------------
def _pass_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("transforms")
    group.add_argument("--passes", metavar="A,B,C",
                       help="transforms to run in order (see 'tm2onnx transforms'); "
                            "'deploy' = the default deployment pipeline")
    group.add_argument("--rename", action="append", metavar="OLD=NEW",
                       help="for the 'rename' pass: rename a tensor (repeatable)")
    group.add_argument("--fp16-min-params", type=int, metavar="N",
                       help="for 'fp16-linear': convert layers with in*out >= N "
                            "(default 102400 = 100*1024)")
    group.add_argument("--fp16-block", metavar="OP,OP",
                       help="for 'fp16': op types kept in fp32 (default: Softmax, norms, "
                            "reductions, Exp/Log/Pow, Resize, ...)")
    group.add_argument("--wrap-pre", metavar="PRE.onnx", help="for 'wrap': model run before")
    group.add_argument("--wrap-post", metavar="POST.onnx", help="for 'wrap': model run after")
    group.add_argument("--wrap-connect", action="append", metavar="SRC=DST",
                       help="for 'wrap': wire pre/NAME, NAME or post/NAME explicitly "
                            "(repeatable; default: by position)")
    group.add_argument("--wrap-steps", metavar="STEPS",
                       help="for 'wrap': built-in steps, space-separated, e.g. "
                            "\"uint8 nhwc scale:1/255 softmax:axis=1\"")


def _pipeline_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    options: dict[str, dict[str, Any]] = {}
    if args.rename:
        options["rename"] = {"mapping": parse_key_values(args.rename, "rename")}
    if args.fp16_min_params is not None:
        options["fp16-linear"] = {"min_params": args.fp16_min_params}
    if args.fp16_block is not None:
        options["fp16"] = {"block": tuple(csv(args.fp16_block) or ())}
    wrap = {"pre": args.wrap_pre, "post": args.wrap_post, "steps": args.wrap_steps,
            "connect": parse_key_values(args.wrap_connect, "wrap-connect") or None}
    wrap = {key: value for key, value in wrap.items() if value}
    if wrap:
        options["wrap"] = wrap
    return options


def _quantized_tolerance(model: onnx.ModelProto, args: argparse.Namespace,
                         progress: Progress) -> dict[str, Any]:
    """A model quantizing activations is judged layer by layer (teacher-forced, one step)
    against MegEngine, end-to-end steps reported; an explicit --atol compares end to end."""
    from ..runtime.steps import has_activation_qdq

    tolerances = _tolerances(args, _expanded_passes(args))
    if args.atol is None and has_activation_qdq(model):
        progress.step("quantized model: tolerance one step per layer (teacher-forced against "
                      "MegEngine); --atol compares end to end instead")
    return tolerances


def _expanded_passes(args: argparse.Namespace) -> list[str]:
    from ..transforms import expand

    return expand(csv(args.passes) or [])


def run_passes(model: onnx.ModelProto, args: argparse.Namespace, progress: Progress,
               validate: bool) -> onnx.ModelProto:
    """Run --passes; with `validate`, compare before/after every transform and stop at drift."""
    from ..check.validate import against_onnx
    from ..runtime import random_feeds, run_model
    from ..runtime.inputs import fill_dims
    from ..transforms import run_pipeline

    names = csv(args.passes)
    if not names:
        return model

    def check_step(name: str, before: onnx.ModelProto, after: onnx.ModelProto, report) -> None:
        progress.step(str(report))
        if validate and report.changed and name not in NOT_COMPARABLE:
            try:
                result = against_onnx(after, before, subject=f"after {name}",
                                      reference=f"before {name}", **_tolerances(args, [name]))
            except RunError as err:
                # Blame the transform only when the model ran before it: a model or feeds that
                # onnxruntime cannot run at all are reported as such (this raises first).
                feeds = random_feeds(before, seed=args.seed, dims=fill_dims(before, _dims(args))[0])
                run_model(before, feeds, device=args.device, opt_level="disable")
                raise Tm2OnnxError(f"after transform {name!r}: {err}",
                                   hint="drop it from --passes and report the model") from err
            if not result:
                print(result)
                raise OutputMismatch(f"transform {name!r} changed the outputs beyond tolerance",
                                     hint="drop it from --passes and report the model")

    progress.step(f"running transforms: {', '.join(names)}")
    model, _reports = run_pipeline(model, names, options=_pipeline_options(args),
                                   on_step=check_step)
    return model


# ---- export --------------------------------------------------------------------------------
def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="pickled TracedModule (.tm)")
    parser.add_argument("-o", "--output", required=True, help="ONNX file to write")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 13..newest (17)")
    parser.add_argument("--dynamic-batch", action="store_true", help="make dim 0 symbolic")
    parser.add_argument("--input-names", metavar="A,B", help="names for the graph inputs")
    parser.add_argument("--output-names", metavar="Y", help="names for the graph outputs")
    parser.add_argument("--validate", action="store_true",
                        help="compare onnxruntime with MegEngine (and check every transform)")
    parser.add_argument("--qdq-activations", choices=QDQ_ACTIVATIONS, default="uint8",
                        help="QAT/int8 models: activation type of the Q/DQ pairs (uint8: "
                             "onnxruntime CPU; int8: TensorRT)")
    parser.add_argument("--qdq-weights", choices=QDQ_WEIGHTS, default="int8",
                        help="QAT/int8 models: 8-bit weight type (int8: TensorRT and "
                             "onnxruntime on VNNI CPUs; uint8 = int8+128: exact in "
                             "onnxruntime on x86 without VNNI, whose U8S8 kernels saturate)")
    parser.add_argument("--target", choices=list(TARGETS), default=DEFAULT_TARGET,
                        help="the toolchain the file is for: its patterns, and a refusal of "
                             "what it cannot run (docs/targets.md). " + targets_help())
    parser.add_argument("--quant-params-json", metavar="FILE",
                        help="also write the Q/DQ scales as mgeconvert's quantize_file_path JSON")
    _pass_options(parser)
    _validation_options(parser)
    add_load_options(parser)
    add_write_options(parser)


@command("export", "export a TracedModule (.tm) to ONNX, optionally transform and validate",
         _export_arguments)
def export_command(args: argparse.Namespace, progress: Progress) -> int:
    from ..exporting.exporter import export

    require_megengine("export")
    target = output_target(args, [args.model])
    if args.validate and NOT_COMPARABLE.intersection(_expanded_passes(args)):
        raise Tm2OnnxError("--validate cannot compare a wrapped model with MegEngine",
                           hint="export with --validate first, then run 'tm2onnx optimize "
                                "--passes wrap'")
    progress.step(f"loading {args.model}")
    silence_megengine_banner()
    traced = load_tm(args.model, args)
    exprs = sum(1 for _ in traced.graph.exprs(recursive=True))
    progress.step(f"exporting {exprs} exprs to ONNX opset {args.opset}")
    model = export(traced, opset=args.opset, dynamic_batch=args.dynamic_batch,
                   input_names=csv(args.input_names), output_names=csv(args.output_names),
                   source=args.model, qdq_activations=args.qdq_activations,
                   qdq_weights=args.qdq_weights, target=args.target)
    source = args.model
    if args.dynamic_batch and args.validate and "batch" not in _dims(args):
        args.dim = (args.dim or []) + ["batch=1"]
    exported = model
    model = run_passes(model, args, progress, args.validate)
    if model is not exported:  # the transforms' result must still run on the target
        check_model_for_target(model, args.target, source)
    status = EXIT_OK
    if args.validate:
        from ..check.validate import against_megengine

        progress.step("validating with onnxruntime against MegEngine")
        report = against_megengine(model, traced, subject=str(target),
                                   reference=f"MegEngine ({source})",
                                   **_quantized_tolerance(model, args, progress))
        print(report)
        status = EXIT_OK if report else EXIT_MISMATCH
    else:
        _warn_if_kernels_saturate(model, args)
    if status != EXIT_OK:
        print(f"tm2onnx export: outputs differ beyond tolerance; {target} not written")
        return status
    params = _quant_params(model, args.quant_params_json)
    write_model(model, args)
    print(f"wrote {target}: {len(model.graph.node)} nodes, {_param_count(model):,} parameters, "
          f"opset {args.opset}")
    if params:
        from ..fileio import check_output, write_atomic

        path = check_output(args.quant_params_json, [args.model, args.output])
        text = json.dumps(params, indent=4).encode()
        write_atomic(path, lambda handle: handle.write(text))
        print(f"wrote {path}: {len(params)} quantized tensors")
    return EXIT_OK


def _warn_if_kernels_saturate(model: onnx.ModelProto, args: argparse.Namespace) -> None:
    """Unvalidated QDQ export with int8 weights and signed uint8 activations feeding a matmul
    or conv, on an x86 CPU without VNNI: onnxruntime's U8S8 kernels here may saturate."""
    from ..runtime.session import cpu_has_vnni

    if args.qdq_weights != "int8" or cpu_has_vnni() is not False:
        return
    inits = {init.name: init for init in model.graph.initializer}
    consumers = {name: node.op_type for node in model.graph.node for name in node.input}
    signed = [node.output[0] for node in model.graph.node
              if node.op_type == "DequantizeLinear" and node.input[0] not in inits
              and len(node.input) == 3 and node.input[2] in inits
              and inits[node.input[2]].data_type == onnx.TensorProto.UINT8
              and onnx.numpy_helper.to_array(inits[node.input[2]]).max() > 0
              and consumers.get(node.output[0]) in ("Conv", "Gemm", "MatMul")]
    if signed:
        warnings.warn(f"{args.output}: this CPU has no VNNI; onnxruntime's int8 kernels here "
                      f"may saturate on layers reading signed activations ({signed[0]}, ...): "
                      "check with --validate, or export with --qdq-weights uint8 (exact, "
                      "slower)", stacklevel=2)


def _quant_params(model: onnx.ModelProto, path: str | None) -> dict[str, Any]:
    """The --quant-params-json content, checked before anything is written."""
    if not path:
        return {}
    from ..exporting.converters._qdq import quant_params

    params = quant_params(model)
    if not params:
        raise Tm2OnnxError("--quant-params-json: the model has no DequantizeLinear",
                           where=path, hint="export a QAT or int8 (quantized) model")
    return params


def _param_count(model: onnx.ModelProto) -> int:
    count = 0
    for init in model.graph.initializer:
        size = 1
        for dim in init.dims:
            size *= dim
        count += size
    return count


# ---- optimize ------------------------------------------------------------------------------
def _optimize_arguments(parser: argparse.ArgumentParser) -> None:
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
    _pass_options(parser)
    _validation_options(parser)
    add_write_options(parser)


@command("optimize", "apply graph transforms to any ONNX model", _optimize_arguments)
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

        if not NOT_COMPARABLE.intersection(_expanded_passes(args)):
            report = against_onnx(model, original, subject=str(target), reference=args.model,
                                  **_tolerances(args, _expanded_passes(args)))
            print(report, file=log)
            if not report:
                return EXIT_MISMATCH
    write_model(model, args, input_external=external)
    rows = optimize.op_count_rows(loaded, model)
    print(f"wrote {target}: {len(loaded.graph.node)} -> {len(model.graph.node)} nodes", file=log)
    print(optimize.op_count_json(rows, input=args.model, output=str(target)) if args.json
          else optimize.op_count_table(rows))
    return EXIT_OK


# ---- validate (options and handler in validate_cli.py) -------------------------------------
command("validate", "compare an ONNX model with MegEngine (or another ONNX model) on seeded "
        "or given inputs; on a difference, name the first tensor that diverges",
        validate_arguments)(validate_command)
command("bench", "time an ONNX model in onnxruntime (median/p90/p99, throughput), interleaved "
        "with --against ONNX and/or --tm MegEngine; prints the ratios", bench_arguments)(
    bench_command)


# ---- where / transforms ------------------------------------------------------------------------
def _where_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model")
    parser.add_argument("--op", required=True, help="ONNX op type whose inputs to trace, e.g. Concat")


@command("where", "show where each input of the matching nodes comes from (producer node and "
         "MegEngine module)", _where_arguments)
def where_command(args: argparse.Namespace, progress: Progress) -> int:
    from ..transforms import producers

    found = producers(load_onnx(args.model), op_type=args.op)
    if not found:
        print(f"no {args.op} nodes in {args.model}")
        return EXIT_OK
    for info in found:
        print(info)
    return EXIT_OK


@command("transforms", "list the available transforms with one-line descriptions",
         lambda parser: None)
def transforms_command(args: argparse.Namespace, progress: Progress) -> int:
    from ..transforms import DEPLOY_PIPELINE, describe

    rows = describe()
    width = max(len(name) for name, _ in rows)
    for name, doc in rows:
        print(f"{name:<{width}}  {doc}")
    print(f"{'deploy':<{width}}  the default deployment pipeline: {', '.join(DEPLOY_PIPELINE)}")
    return EXIT_OK


__all__ = ["COMMANDS", "EXIT_ERROR"]
