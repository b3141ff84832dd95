"""Pre/post-processing around a model, the ONNX form of the guide's wrapper Module: ONNX models
run before (`pre`) and after (`post`) it, then built-in steps (see wrap_steps.py). The result's
interface is pre's inputs, post's outputs and whatever of the model's I/O is left unwired."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx
import onnx_graphsurgeon as gs
from onnx import version_converter

from tm2onnx.errors import TransformError

from . import transform
from .dtypes import as_dtype
from .graphio import to_graph, to_model
from .graphops import toposort
from .patterns import name_maker, replace_uses
from .report import TransformReport
from .wrap_steps import apply_steps, parse_steps

ModelSource = onnx.ModelProto | str | os.PathLike | None


@dataclass
class _Link:
    """`sink`'s readers will read `source` (a model output feeding a later model's input)."""

    source: gs.Tensor
    sink: gs.Tensor
    source_name: str
    sink_name: str


@transform("wrap")
def wrap(graph: gs.Graph, *, pre: ModelSource = None, post: ModelSource = None,
         connect: dict[str, str] | None = None, steps: tuple[str, ...] | str = ()
         ) -> TransformReport:
    """Run ONNX models before/after the graph (their names prefixed pre/ and post/, their
    extra inputs made graph inputs) and built-in steps; raises TransformError on bad specs,
    unknown names, or mismatched dtypes, shapes or opsets."""
    specs = parse_steps(steps)  # every spec is checked before the graph changes
    if pre is None and post is None and not specs:
        raise TransformError("wrap needs pre, post or steps", hint="e.g. steps=('uint8',)")
    report = TransformReport("wrap", verb="added")
    subs = {role: _load(source, role, graph.opset)
            for role, source in (("pre", pre), ("post", post)) if source is not None}
    if subs:
        links = _links(graph, subs, connect or {})
        _merge(graph, subs, links)
        for role in subs:
            report.rewrote(f"{role} model")
    for name in apply_steps(graph, specs):
        report.rewrote(name)
    report.modified = True
    return report


def wrap_model(model: onnx.ModelProto, *, pre: ModelSource = None, post: ModelSource = None,
               connect: dict[str, str] | None = None, steps: tuple[str, ...] | str = ()
               ) -> onnx.ModelProto:
    """`model` (unchanged) wrapped as `wrap` does; model metadata and opsets are kept."""
    graph = to_graph(model)
    wrap(graph, pre=pre, post=post, connect=connect, steps=steps)
    return to_model(graph, like=model)


def _load(source: onnx.ModelProto | str | os.PathLike, role: str, opset: int) -> gs.Graph:
    """The pre/post model as a graph in the main model's opset."""
    where = f"wrap {role}"
    if not isinstance(source, onnx.ModelProto):
        where = os.fspath(source)
        try:
            source = onnx.load(where)
        except Exception as err:  # OSError, protobuf's DecodeError, ...
            raise TransformError(f"cannot load {role} model: {err}", where=where) from err
    if source.functions or any(n.domain not in ("", "ai.onnx") for n in source.graph.node):
        raise TransformError(f"{role} model uses local functions or custom domains",
                             where=where, hint="only standard ONNX ops can be merged")
    version = next((o.version for o in source.opset_import if o.domain in ("", "ai.onnx")), opset)
    if version != opset:
        try:
            source = version_converter.convert_version(source, opset)
        except Exception as err:  # the converter raises several unrelated types
            raise TransformError(f"cannot convert {role} model from opset {version} to {opset}"
                                 f": {err}", where=where,
                                 hint=f"export the {role} model at opset {opset}") from err
    return gs.import_onnx(source)


def _links(main: gs.Graph, subs: dict[str, gs.Graph], connect: dict[str, str]) -> list[_Link]:
    """Edges from `connect` ("pre/out" -> "x", "y" -> "post/in"), else by position for each
    model that `connect` does not mention; checks names, dtypes and shapes."""
    pre, post = subs.get("pre"), subs.get("post")
    # Stages order the models: a link must go from an earlier stage to a later one.
    sources = {t.name: (t, 1) for t in main.outputs}
    sources.update({f"pre/{t.name}": (t, 0) for t in (pre.outputs if pre else [])})
    sinks = {t.name: (t, 1) for t in main.inputs}
    sinks.update({f"post/{t.name}": (t, 2) for t in (post.inputs if post else [])})
    links = [_link(sources, sinks, src, dst) for src, dst in connect.items()]
    if pre and not any(sources[link.source_name][1] == 0 for link in links):
        if len(pre.outputs) > len(main.inputs):
            raise TransformError(f"pre has {len(pre.outputs)} outputs but the model only "
                                 f"{len(main.inputs)} inputs", hint="wire them with connect")
        links += [_link(sources, sinks, f"pre/{o.name}", i.name)
                  for o, i in zip(pre.outputs, main.inputs)]
    if post and not any(sinks[link.sink_name][1] == 2 for link in links):
        links += [_link(sources, sinks, o.name, f"post/{i.name}")
                  for o, i in zip(main.outputs, post.inputs)]
    _check_links(links, pre)
    return links


def _link(sources: dict[str, tuple[gs.Tensor, int]], sinks: dict[str, tuple[gs.Tensor, int]],
          src: str, dst: str) -> _Link:
    for name, table, what in ((src, sources, "source"), (dst, sinks, "destination")):
        if name not in table:
            raise TransformError(f"connect: no {what} {name!r}",
                                 hint=f"{what}s: {', '.join(map(repr, table))}")
    (source, src_stage), (sink, dst_stage) = sources[src], sinks[dst]
    if src_stage >= dst_stage:
        raise TransformError(f"connect: {src!r} -> {dst!r} would feed the model to itself")
    if reason := _mismatch(source, sink):
        raise TransformError(f"cannot feed {src!r} to {dst!r}: {reason}")
    return _Link(source, sink, src, dst)


def _check_links(links: list[_Link], pre: gs.Graph | None) -> None:
    seen: dict[int, str] = {}
    for link in links:
        if id(link.sink) in seen:
            raise TransformError(f"{link.sink_name!r} is fed twice ({seen[id(link.sink)]!r} and "
                                 f"{link.source_name!r})")
        seen[id(link.sink)] = link.source_name
    fed = {id(link.source) for link in links}
    unused = [t.name for t in (pre.outputs if pre else []) if id(t) not in fed]
    if unused:
        raise TransformError(f"pre output(s) {', '.join(unused)} feed nothing",
                             hint="wire them with connect, e.g. {'pre/z': 'x'}")


def _mismatch(source: gs.Tensor, sink: gs.Tensor) -> str | None:
    """Why `source` cannot stand in for `sink` (dtype or a known dim differs); None if it can."""
    a, b = as_dtype(source.dtype), as_dtype(sink.dtype)
    if a is not None and b is not None and a != b:
        return f"dtype {a} vs {b}"
    if source.shape is None or sink.shape is None:
        return None
    if len(source.shape) != len(sink.shape) or any(
            isinstance(x, int) and isinstance(y, int) and x != y
            for x, y in zip(source.shape, sink.shape)):
        return f"shape {list(source.shape)} vs {list(sink.shape)}"
    return None


def _merge(main: gs.Graph, subs: dict[str, gs.Graph], links: list[_Link]) -> None:
    sinks, sources = {id(k.sink) for k in links}, {id(k.source) for k in links}
    pre, post = subs.get("pre"), subs.get("post")
    inputs = [*(pre.inputs if pre else []), *(t for t in main.inputs if id(t) not in sinks),
              *(t for t in (post.inputs if post else []) if id(t) not in sinks)]
    outputs = [*(post.outputs if post else []),
               *(t for t in main.outputs if id(t) not in sources)]
    inputs, shared = _share_by_name(inputs)
    names = [t.name for t in outputs]
    if dups := sorted({n for n in names if names.count(n) > 1}):
        raise TransformError(f"two outputs named {', '.join(map(repr, dups))}",
                             hint="rename one first (the rename transform)")
    _rename(main, subs, inputs + outputs)
    swap = {id(sink): source for source, sink in [(k.source, k.sink) for k in links] + shared}

    def final(tensor: gs.Tensor) -> gs.Tensor:
        # A model input that is also its output (an identity) is a sink and a source at once.
        while id(tensor) in swap:
            tensor = swap[id(tensor)]
        return tensor

    for sink in [k.sink for k in links] + [dup for _, dup in shared]:
        replace_uses(sink, final(sink))
    for sub in subs.values():
        main.nodes.extend(sub.nodes)
    main.inputs = inputs
    main.outputs = [final(t) for t in outputs]
    toposort(main)


def _share_by_name(inputs: list[gs.Tensor]) -> tuple[list[gs.Tensor], list[tuple]]:
    """Inputs named alike (`y` of both pre and post) become one; returns (kept, (kept, dup))."""
    kept: dict[str, gs.Tensor] = {}
    shared = []
    for tensor in inputs:
        first = kept.setdefault(tensor.name, tensor)
        if first is not tensor:
            if reason := _mismatch(first, tensor):
                raise TransformError(f"inputs named {tensor.name!r} differ: {reason}")
            shared.append((first, tensor))
    return list(kept.values()), shared


def _rename(main: gs.Graph, subs: dict[str, gs.Graph], interface: list[gs.Tensor]) -> None:
    """Prefix pre/post names; the model's own tensors named like the new interface (its `y`
    when post's input `y` becomes a graph input) become main/<name>."""
    keep = {id(t) for t in interface}
    taken = {t.name for sub in subs.values() for t in interface if _owned(sub, t)}
    fresh = name_maker(main)
    for tensor in main.tensors().values():
        if id(tensor) not in keep and tensor.name in taken:
            tensor.name = fresh(f"main/{tensor.name}")
    for role, sub in subs.items():
        for tensor in sub.tensors().values():
            if tensor.name and id(tensor) not in keep:
                tensor.name = fresh(f"{role}/{tensor.name}")
        for node in sub.nodes:
            node.name = fresh(f"{role}/{node.name or node.op}")


def _owned(sub: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(t is tensor for t in [*sub.inputs, *sub.outputs])
