"""The CLI's subcommands, registered by name in `--help` order: each is (help, add_arguments,
handler). Each command lives in its own module; this table is the only place naming them all."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from . import bench, export, optimize, query, validate
from .common import EXIT_ERROR, Progress
from .passes import NOT_COMPARABLE, run_passes  # their home before the split

Handler = Callable[[argparse.Namespace, Progress], int]
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Handler]] = {}


def command(name: str, help_text: str, add_arguments: Callable[[argparse.ArgumentParser], None],
            handler: Handler) -> None:
    if name in COMMANDS:
        raise ValueError(f"command {name!r} registered twice")
    COMMANDS[name] = (help_text, add_arguments, handler)


command("export", export.HELP, export.export_arguments, export.export_command)
command("optimize", optimize.HELP, optimize.optimize_arguments, optimize.optimize_command)
command("validate", validate.HELP, validate.validate_arguments, validate.validate_command)
command("bench", bench.HELP, bench.bench_arguments, bench.bench_command)
command("where", query.WHERE_HELP, query.where_arguments, query.where_command)
command("transforms", query.TRANSFORMS_HELP, query.transforms_arguments,
        query.transforms_command)

__all__ = ["COMMANDS", "EXIT_ERROR", "NOT_COMPARABLE", "command", "run_passes"]
