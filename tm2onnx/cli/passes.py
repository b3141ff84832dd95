"""The --passes options shared by `export` and `optimize`, and running them: the pipeline, with
a before/after comparison of every transform under --validate."""

from __future__ import annotations

import argparse
from typing import Any

import onnx

from ..errors import OutputMismatch, RunError, Tm2OnnxError
from .common import Progress, _dims, _tolerances, csv, parse_key_values

# `wrap` changes the function on purpose: its result is not compared with the model before.
NOT_COMPARABLE = {"wrap"}


def add_pass_options(parser: argparse.ArgumentParser) -> None:
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


def pipeline_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
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


def expanded_passes(args: argparse.Namespace) -> list[str]:
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
    model, _reports = run_pipeline(model, names, options=pipeline_options(args),
                                   on_step=check_step)
    return model
