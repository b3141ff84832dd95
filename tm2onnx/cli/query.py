"""`tm2onnx where` (where each input of the matching nodes comes from) and `tm2onnx transforms`
(the transform list): the read-only commands."""

from __future__ import annotations

import argparse

from .common import EXIT_OK, Progress, load_onnx

WHERE_HELP = ("show where each input of the matching nodes comes from (producer node and "
              "MegEngine module)")
TRANSFORMS_HELP = "list the available transforms with one-line descriptions"


def where_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model")
    parser.add_argument("--op", required=True, help="ONNX op type whose inputs to trace, e.g. Concat")


def where_command(args: argparse.Namespace, progress: Progress) -> int:
    from ..transforms import producers

    found = producers(load_onnx(args.model), op_type=args.op)
    if not found:
        print(f"no {args.op} nodes in {args.model}")
        return EXIT_OK
    for info in found:
        print(info)
    return EXIT_OK


def transforms_arguments(parser: argparse.ArgumentParser) -> None:
    pass  # no options


def transforms_command(args: argparse.Namespace, progress: Progress) -> int:
    from ..transforms import DEPLOY_PIPELINE, describe

    rows = describe()
    width = max(len(name) for name, _ in rows)
    for name, doc in rows:
        print(f"{name:<{width}}  {doc}")
    print(f"{'deploy':<{width}}  the default deployment pipeline: {', '.join(DEPLOY_PIPELINE)}")
    return EXIT_OK
