"""`tm2onnx export`: a TracedModule (.tm) to ONNX, optionally transformed and validated against
MegEngine; --quant-params-json for quantized models."""

from __future__ import annotations

import argparse
import json
import warnings
from typing import Any

import onnx
import onnx.numpy_helper

from .._quiet import silence_megengine_banner
from ..check.checking import check_model_for_target
from ..errors import Tm2OnnxError
from ..exporting.exporter import QDQ_ACTIVATIONS, QDQ_WEIGHTS
from ..exporting.targets import DEFAULT_TARGET, TARGETS, targets_help
from .common import (
    EXIT_MISMATCH,
    EXIT_OK,
    Progress,
    _dims,
    _tolerances,
    _validation_options,
    csv,
    require_megengine,
)
from .options import add_load_options, add_write_options, load_tm, output_target, write_model
from .passes import NOT_COMPARABLE, add_pass_options, expanded_passes, run_passes

HELP = "export a TracedModule (.tm) to ONNX, optionally transform and validate"


def export_arguments(parser: argparse.ArgumentParser) -> None:
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
    add_pass_options(parser)
    _validation_options(parser)
    add_load_options(parser)
    add_write_options(parser)


def export_command(args: argparse.Namespace, progress: Progress) -> int:
    from ..exporting.exporter import export

    require_megengine("export")
    target = output_target(args, [args.model])
    if args.validate and NOT_COMPARABLE.intersection(expanded_passes(args)):
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


def _quantized_tolerance(model: onnx.ModelProto, args: argparse.Namespace,
                         progress: Progress) -> dict[str, Any]:
    """A model quantizing activations is judged layer by layer (teacher-forced, one step)
    against MegEngine, end-to-end steps reported; an explicit --atol compares end to end."""
    from ..runtime.steps import has_activation_qdq

    tolerances = _tolerances(args, expanded_passes(args))
    if args.atol is None and has_activation_qdq(model):
        progress.step("quantized model: tolerance one step per layer (teacher-forced against "
                      "MegEngine); --atol compares end to end instead")
    return tolerances
