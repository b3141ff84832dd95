"""`tm2onnx` command line: export | optimize | validate | bench | where | transforms.

`main` is the console script (`tm2onnx.cli:main`); nothing in the package imports this one."""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from google.protobuf.message import EncodeError

from .. import __version__
from ..errors import Tm2OnnxError, TransformBug
from .common import EXIT_ERROR, Progress


def _warn_one_line(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"tm2onnx: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    warnings.showwarning = _warn_one_line  # a user needs the message, not our source line
    command = "tm2onnx"
    try:  # Ctrl-C during start-up (imports take seconds) exits as cleanly as during work
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help()
            return EXIT_ERROR
        command = f"tm2onnx {args.command}"
        from .options import check_args

        check_args(args)
        return args.handler(args, Progress(args.quiet))
    except Tm2OnnxError as err:
        print(f"{command}: error: {err}", file=sys.stderr)
        if isinstance(err, TransformBug) and err.__cause__ is not None:
            traceback.print_exception(err.__cause__, file=sys.stderr)  # for the bug report
        return getattr(err, "exit_code", EXIT_ERROR)
    except EncodeError as err:  # protobuf's own 2 GB limit, hit before any file is written
        print(f"{command}: error: protobuf cannot hold it ({err}): one tensor passes 2 GB — "
              "models past 2 GB are written with external data, but each tensor must stay "
              "under 2 GB", file=sys.stderr)
        return EXIT_ERROR
    except OSError as err:  # anything the fileio layer did not word itself
        print(f"{command}: error: {err.filename or ''}{': ' if err.filename else ''}"
              f"{err.strerror or err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("tm2onnx: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    from . import commands

    parser = argparse.ArgumentParser(
        prog="tm2onnx",
        description="Export MegEngine TracedModules (.tm) to ONNX, apply deployment graph "
                    "surgeries, and check the result against MegEngine with onnxruntime.",
        epilog="Run 'tm2onnx COMMAND --help' for a command's options. "
               "Exit status: 0 ok, 1 outputs differ beyond tolerance, 2 error.")
    parser.add_argument("--version", action="version", version=f"tm2onnx {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_arguments, handler) in commands.COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(command)
        command.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
        command.set_defaults(handler=handler)
    return parser


def run(argv: Any = None) -> None:  # pragma: no cover - console entry
    sys.exit(main(argv))
