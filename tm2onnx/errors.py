"""Errors tm2onnx raises for things a user can fix: each prints as one line naming the file,
the expr or node, and what to do."""

from __future__ import annotations


class Tm2OnnxError(Exception):
    """Base class; `str()` is one line: `<where>: <what> — <hint>`."""

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" — {self.hint}"
        return text.replace("\n", " ")


class LoadError(Tm2OnnxError):
    """The input file is missing, unreadable, or not what it should be."""


class UnsupportedOpError(Tm2OnnxError):
    """One or more exprs have no ONNX converter (all are listed at once)."""


class ConversionError(Tm2OnnxError):
    """A converter found an expr it recognizes but cannot express (e.g. an unsupported mode)."""


class TransformError(Tm2OnnxError):
    """A graph transform failed or was given bad parameters."""


class TransformBug(TransformError):
    """A transform crashed (not a refusal): the original exception is kept as `__cause__`,
    with its traceback, for the bug report. A TransformError too, for callers that catch
    that; tell the two apart with isinstance(err, TransformBug)."""


class ValidationError(Tm2OnnxError):
    """Outputs differ beyond tolerance, or a runtime could not run the model."""


class RunError(ValidationError):
    """onnxruntime or MegEngine could not run the model: an error (exit 2), not a difference."""


class OutputMismatch(ValidationError):
    """Outputs were compared and differ beyond tolerance: the one error that exits with 1."""

    exit_code = 1
