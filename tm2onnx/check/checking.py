"""onnx.checker plus full shape inference on what we read and what we write: an input that
does not check is refused with the checker's own message; an output that does not is a bug."""

from __future__ import annotations

import onnx

from ..errors import ConversionError, LoadError


def check_model(model: onnx.ModelProto, *, where: str, produced: bool = False) -> None:
    """Raise LoadError (an input) or ConversionError (`produced`: our output) naming `where`
    when `model` fails onnx.checker with full shape inference. Large weights are checked as
    typed inputs, so models past protobuf's 2 GB limit check too."""
    from ..exporting.exporter import check_structure

    try:
        if not model.graph.node and not model.graph.output:
            raise ValueError("the model is empty (no nodes, no outputs)")
        _check_opsets(model)
        check_structure(model)
    except Exception as err:  # onnx raises ValidationError, InferenceError, ValueError, ...
        message = " ".join(str(err).split())
        if produced:
            raise ConversionError(f"the result fails onnx.checker: {message}", where=where,
                                  hint="nothing was written; this is a tm2onnx bug, please "
                                       "report it with the input model") from err
        raise LoadError(f"fails onnx.checker: {message}", where=where,
                        hint="fix or re-export the model; tm2onnx only transforms valid "
                             "models") from err


def _check_opsets(model: onnx.ModelProto) -> None:
    # onnx.checker accepts any opset number; a schema lookup at an unknown one is not a check.
    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and not 1 <= entry.version <= newest:
            raise ValueError(f"opset {entry.version} is not an ONNX opset (this onnx knows "
                             f"1..{newest})")


def check_model_for_target(model: onnx.ModelProto, name: str, source: str | None = None) -> None:
    """check_target on any model (types from strict shape inference of its structure): for a
    model changed after export, e.g. by `--passes`."""
    from ..exporting.exporter import structure_of
    from ..exporting.guards import inferred_types
    from ..exporting.targets import check_target, get_target

    check_target(model, inferred_types(structure_of(model)), get_target(name, source), source)
