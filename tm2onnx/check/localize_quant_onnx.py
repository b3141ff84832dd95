"""Teacher-forced check of one QDQ model against another (a transform's before/after, or
`validate --against`): the reference runs unoptimized with every QuantizeLinear output exposed,
the subject runs optimized (onnxruntime's int8 kernels) with each such tensor fed the
reference's value, so each quantized layer is judged on its own, in steps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx.numpy_helper

from ..runtime.compare import Tolerance
from ..runtime.session import exposing_session, run_model
from ..runtime.steps import activation_grids, averaged_grids, count_steps
from .localize_quant import FORCED_SAMPLES, ForcedReport, ForcedTensor, judged

COMPUTED = "::computed"  # suffix of the subject's own value of a tensor it is fed


@dataclass(frozen=True)
class Quantized:
    """An activation QuantizeLinear: what it reads, and its scale and zero point."""

    input: str
    scale: np.ndarray
    zero: np.ndarray

    def key(self) -> tuple:
        return (self.input, self.scale.tobytes(), self.zero.tobytes(), str(self.zero.dtype))

    def dequantized(self, values: np.ndarray) -> np.ndarray:
        return (values.astype(np.float64) - self.zero.astype(np.float64)) * self.scale


def quantized_tensors(model: onnx.ModelProto) -> dict[str, Quantized]:
    """Output name -> Quantized for each per-tensor QuantizeLinear of a computed tensor (with
    constant scale and zero point), in graph order; its input named past Identity nodes, so a
    QuantizeLinear merged with its twin once an Identity went (fold-shapes, cse) is found."""
    inits = {init.name: init for init in model.graph.initializer}
    copies = {node.output[0]: node.input[0] for node in model.graph.node
              if node.op_type == "Identity" and node.input and node.output}

    def source(name: str) -> str:
        seen = set()
        while name in copies and name not in seen:
            seen.add(name)
            name = copies[name]
        return name

    found = {}
    for node in model.graph.node:
        if (node.op_type != "QuantizeLinear" or node.input[0] in inits or len(node.input) < 3
                or node.input[1] not in inits or node.input[2] not in inits):
            continue
        scale = onnx.numpy_helper.to_array(inits[node.input[1]])
        zero = onnx.numpy_helper.to_array(inits[node.input[2]])
        if scale.size == 1 and zero.size == 1 and node.output[0]:
            found[node.output[0]] = Quantized(source(node.input[0]),
                                              scale.astype(np.float64).reshape(()),
                                              zero.reshape(()))
    return found


def forced_copy(model: onnx.ModelProto, names: Sequence[str],
                values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` whose tensors `names` are graph inputs (their consumers read what is fed) while
    the nodes making them write `name::computed`, a graph output."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    wanted = set(names)
    for node in copy.graph.node:
        for index, out in enumerate(node.output):
            if out in wanted:
                node.output[index] = out + COMPUTED
    for name in names:
        value = values[name]
        elem = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        copy.graph.input.append(onnx.helper.make_tensor_value_info(name, elem, value.shape))
        copy.graph.output.append(onnx.helper.make_tensor_value_info(name + COMPUTED, elem,
                                                                    value.shape))
    stale = [v for v in copy.graph.value_info if v.name in wanted]
    for value in stale:
        copy.graph.value_info.remove(value)
    return copy


def teacher_forced_onnx(model: onnx.ModelProto, reference_model: onnx.ModelProto,
                        samples: Sequence[dict[str, np.ndarray]], *, device: str = "cpu",
                        reference_device: str = "cpu", tolerance: Tolerance | None = None,
                        subject: str = "subject", reference: str = "reference") -> ForcedReport:
    """Every activation QuantizeLinear output of `reference_model` judged in the subject: the
    subject's value computed from the reference's values of the quantized tensors before it,
    dequantized with each side's own scale, in steps of the reference's; a reference tensor no
    QuantizeLinear of the subject makes (same name, or same input, scale and zero point) fails
    unless it only copied a tensor on the same grid;
    graph outputs (by position) by the rule of their place (localize_quant.judged)."""
    tolerance = tolerance or Tolerance()
    samples = list(samples)[:FORCED_SAMPLES]
    ours, theirs = quantized_tensors(model), quantized_tensors(reference_model)
    outputs = {o.name for o in model.graph.output}
    by_key = {q.key(): name for name, q in ours.items()}
    pairs = {name: name if name in ours else by_key.get(q.key()) for name, q in theirs.items()}
    # A QuantizeLinear of a tensor already on its own grid copies it: dropping it changes no
    # value, so the subject need not have it (the tensors around it are still compared).
    ref_grids = activation_grids(reference_model)
    pairs = {name: mine for name, mine in pairs.items() if mine is not None
             or not np.isclose(ref_grids.get(theirs[name].input, 0.0), theirs[name].scale)}
    if not set(ours) & set(theirs):  # by key alone, at most the input's QuantizeLinear pairs
        return ForcedReport((), 0, reference=reference, forcing=f"{subject} shares with "
                            f"{reference}", unmatched_hint="no QuantizeLinear output is named alike "
                            "in both: two differently quantized models; "
                            "compare them end to end with --atol")
    grids, session = activation_grids(model), None
    # A QuantizeLinear of a tensor already on a grid (a requantization, a copy at equal scale)
    # is computed from what is fed upstream, not fed: onnxruntime's optimizer drops such
    # DQ->Q pairs and then fails to load a graph that writes them as an output.
    fed = [name for name, mine in pairs.items() if mine == name and name not in outputs
           and ours[name].input not in grids]
    ref_session = exposing_session(reference_model, list(theirs), device=reference_device,
                                   opt_level="disable")
    averaged = averaged_grids(model, grids)
    ref_out = [o.name for o in reference_model.graph.output]
    merged: dict[str, ForcedTensor] = {}
    for feeds in samples:
        ref_values = run_model(ref_session, dict(zip([i.name for i in ref_session.get_inputs()],
                                                     feeds.values())))
        if session is None:
            fed = _same_kind(model, fed, ref_values, feeds, device)
            shown = [mine for mine in pairs.values() if mine is not None and mine not in fed]
            session = exposing_session(forced_copy(model, fed, ref_values), shown, device=device)
        got = run_model(session, {**feeds, **{name: ref_values[name] for name in fed}})
        found = [_judge(name, mine, theirs[name], ours, ref_values, got)
                 for name, mine in pairs.items()]
        found += [judged(mine.name, ref_values[ref_name], got[mine.name], grids, averaged,
                         tolerance, note="graph output")
                  for ref_name, mine in zip(ref_out, model.graph.output)
                  if mine.name not in ours and mine.name in got]
        for tensor in found:
            name = tensor.name
            merged[name] = merged[name].merged(tensor) if name in merged else tensor
    return ForcedReport(tuple(merged.values()), len(samples), reference=reference,
                        forcing=f"{subject} computed from {reference}'s values of their inputs")


def _same_kind(model: onnx.ModelProto, names: list[str], ref_values: dict[str, np.ndarray],
               feeds: dict[str, np.ndarray], device: str) -> list[str]:
    """Those of `names` whose subject value has the reference's shape and dtype: only these
    can be fed (two unrelated files may share a name, not a tensor)."""
    probe = run_model(exposing_session(model, names, device=device, opt_level="disable"), feeds)
    return [name for name in names if name in probe and probe[name].shape ==
            ref_values[name].shape and probe[name].dtype == ref_values[name].dtype]


def _judge(name: str, mine: str | None, quantized: Quantized, ours: dict[str, Quantized],
           ref_values: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> ForcedTensor:
    reference = ref_values[name]
    if mine is None:
        return ForcedTensor(name, tuple(reference.shape), float(quantized.scale), forced=False,
                            note="no QuantizeLinear of the subject makes it (same name, or same "
                                 "input, scale and zero point): a Q/DQ pair was dropped or moved")
    value = got.get(mine + COMPUTED, got.get(mine))
    if value is None or value.shape != reference.shape:
        return ForcedTensor(name, tuple(reference.shape), float(quantized.scale), forced=False,
                            note=f"the subject's {mine} has shape "
                                 f"{None if value is None else list(value.shape)}")
    scale = float(quantized.scale)
    steps = count_steps(quantized.dequantized(reference), ours[mine].dequantized(value), scale)
    tensor = ForcedTensor(name, tuple(value.shape), scale, steps, forced=mine + COMPUTED in got)
    return tensor if mine == name else replace(tensor, note=f"the subject's {mine}")
