"""gs's cleanup() and toposort() in linear time, with exactly gs's result on flat graphs (no
subgraphs, no local functions; anything else goes to gs), and `may_fold`, which tells when gs's
fold_constants (a graph copy plus an onnxruntime session) cannot change anything."""

from __future__ import annotations

from collections.abc import Iterable

import onnx_graphsurgeon as gs

from .patterns import tensor_map

# gs's shape-cast elision rewrites Cast(to float) -> one of these -> Cast(to int).
_CAST_ELISION_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Max", "Min", "Equal", "Greater",
                               "Less", "Concat"})


def is_flat(graph: gs.Graph) -> bool:
    """No local functions and no node holding a subgraph (If/Loop/Scan bodies)."""
    if graph.functions:
        return False
    return not any(isinstance(value, gs.Graph) for node in graph.nodes
                   for value in node.attrs.values())


def tidy(graph: gs.Graph) -> gs.Graph:
    """`graph.cleanup().toposort()`, linear on flat graphs."""
    return toposort(cleanup(graph))


def cleanup(graph: gs.Graph) -> gs.Graph:
    """`graph.cleanup()` (dead nodes go, graph inputs stay): one walk back from the outputs,
    and dead nodes leave their tensors' lists in one pass, not one list.remove each."""
    used = _used_node_ids(graph) if is_flat(graph) else None
    if used is None:
        return graph.cleanup()
    for tensor in graph.inputs:  # gs first cuts producers of graph inputs
        tensor.inputs.clear()
    graph.inputs = list(graph.inputs)
    disconnect([node for node in graph.nodes if id(node) not in used])
    graph.nodes = [node for node in graph.nodes if id(node) in used]
    return graph


def toposort(graph: gs.Graph) -> gs.Graph:
    """`graph.toposort()`: nodes stably sorted by depth (1 + deepest producer), visited in gs's
    depth-first order, so an unsorted graph comes out in the very order gs gives."""
    order = _postorder(graph) if is_flat(graph) else None
    if order is None:  # nested graphs, a cycle, or a producer outside the graph: gs decides
        return graph.toposort()
    nodes, levels = order
    graph.nodes = sorted(nodes, key=lambda node: levels[id(node)])
    return graph


def live_view(graph: gs.Graph) -> gs.Graph:
    """A graph of the nodes cleanup() would keep, sharing `graph`'s nodes and tensors and
    changing nothing, for exporting a pass's midway state without the cost of graph.copy();
    a cleaned-up copy when the graph is not flat or a graph input has a producer."""
    flat = is_flat(graph) and not any(t.inputs for t in graph.inputs)
    used = _used_node_ids(graph) if flat else None
    if used is None:
        return graph.copy().cleanup()
    return gs.Graph(nodes=[n for n in graph.nodes if id(n) in used], inputs=graph.inputs,
                    outputs=graph.outputs, name=graph.name, doc_string=graph.doc_string,
                    opset=graph.opset, import_domains=graph.import_domains,
                    ir_version=graph.ir_version)


def disconnect(nodes: Iterable[gs.Node]) -> None:
    """Clear the inputs and outputs of all `nodes` at once: each touched tensor's back-list is
    filtered once, so removing k readers of a shared constant costs O(k), not O(k²)."""
    dead: set[int] = set()
    readers: dict[int, gs.Tensor] = {}
    writers: dict[int, gs.Tensor] = {}
    for node in nodes:
        dead.add(id(node))
        readers.update((id(t), t) for t in node.inputs)
        writers.update((id(t), t) for t in node.outputs)
        # Plain list methods skip SynchronizedList's per-element back-link updates.
        list.clear(node.inputs)
        list.clear(node.outputs)
    for tensors, field in ((readers, "outputs"), (writers, "inputs")):
        for tensor in tensors.values():
            links = getattr(tensor, field)
            list.__setitem__(links, slice(None), [n for n in links if id(n) not in dead])


def may_fold(graph: gs.Graph) -> bool:
    """False only when gs's fold_constants would leave `graph` as it is: no node reads only
    constants (or nothing), and there is no Constant node, Shape of a tensor with a known
    shape, cast elision candidate, subgraph or function."""
    if not is_flat(graph):
        return True
    tensors = tensor_map(graph)
    constants = {name for name, t in tensors.items() if isinstance(t, gs.Constant)}
    for tensor in tensors.values():
        source = tensor.inputs[0] if len(tensor.inputs) == 1 else None
        if source is not None and (source.op == "Constant" or (
                source.op == "Shape" and source.inputs and source.inputs[0].shape is not None)):
            return True
    outputs = {id(t) for t in graph.outputs}
    for node in graph.nodes:
        if all(t.name in constants for t in node.inputs if t.name):
            return True
        if node.op in _CAST_ELISION_OPS and _elision_candidate(node, outputs):
            return True
    return False


def _elision_candidate(node: gs.Node, graph_outputs: set[int]) -> bool:
    reads_cast = any(p.op == "Cast" for t in node.inputs for p in t.inputs)
    return reads_cast and all(id(t) not in graph_outputs and all(c.op == "Cast" for c in t.outputs)
                              for t in node.outputs)


class _Locality:
    """gs's Graph._local_tensors names (produced here, a graph input, or a constant), built
    only when a tensor has a producer outside the graph: only then does the answer matter."""

    def __init__(self, graph: gs.Graph, members: set[int]) -> None:
        self.graph, self.members, self.names = graph, members, None

    def __call__(self, tensor: gs.Tensor) -> bool:
        if all(id(node) in self.members for node in tensor.inputs):
            return True  # its producers list it as an output (gs keeps both sides in step)
        if self.names is None:
            graph = self.graph
            self.names = {t.name for node in graph.nodes for t in node.outputs if t.name}
            self.names.update(t.name for t in graph.inputs)
            self.names.update(name for name, t in tensor_map(graph).items()
                              if isinstance(t, gs.Constant))
        return tensor.name in self.names


def _used_node_ids(graph: gs.Graph) -> set[int] | None:
    """ids of the nodes gs's cleanup keeps (walking back from the outputs, tensors deduplicated
    by name as gs does); None when gs would see something odd (a node listed twice, a producer
    outside the graph)."""
    members = {id(node) for node in graph.nodes}
    if len(members) != len(graph.nodes):
        return None
    local, seen = _Locality(graph, members), set()
    cut = {id(t) for t in graph.inputs}  # their producers are cleared before the walk

    def fresh(tensor: gs.Tensor) -> bool:
        if not tensor.name:
            return True
        if tensor.name in seen or not local(tensor):
            return False
        seen.add(tensor.name)
        return True

    queue = [t for t in graph.outputs if fresh(t)]
    used: set[int] = set()
    for tensor in queue:  # grows while iterating: a breadth-first walk
        if id(tensor) in cut:
            continue
        for node in tensor.inputs:
            if id(node) not in members:
                return None
            used.add(id(node))
            queue.extend(t for t in node.inputs if fresh(t))
    return used


def _postorder(graph: gs.Graph) -> tuple[list[gs.Node], dict[int, int]] | None:
    """Nodes in the order gs's recursive get_hierarchy_level first finishes them, and each
    node's level; None on a cycle, a repeated node or a producer outside the graph."""
    members = {id(node) for node in graph.nodes}
    if len(members) != len(graph.nodes):
        return None
    if (levels := _levels_if_sorted(graph.nodes)) is not None:
        return graph.nodes, levels
    local = _Locality(graph, members)
    levels: dict[int, int] = {}
    order: list[gs.Node] = []
    for root in graph.nodes:
        if id(root) in levels:
            continue
        on_path = {id(root)}
        stack = [(root, iter(_producers(root, local)), -1)]
        while stack:
            node, pending, deepest = stack.pop()
            for pred in pending:
                if id(pred) not in members or id(pred) in on_path:
                    return None
                if id(pred) in levels:
                    deepest = max(deepest, levels[id(pred)])
                    continue
                stack.append((node, pending, deepest))  # resume here once pred is done
                stack.append((pred, iter(_producers(pred, local)), -1))
                on_path.add(id(pred))
                break
            else:
                levels[id(node)] = deepest + 1
                order.append(node)
                on_path.discard(id(node))
                if stack:  # the parent takes this level into account
                    parent, parent_pending, parent_deepest = stack.pop()
                    stack.append((parent, parent_pending, max(parent_deepest, deepest + 1)))
    return order, levels


def _levels_if_sorted(nodes: list[gs.Node]) -> dict[int, int] | None:
    """Levels in one pass when every producer comes before its readers (the usual case, where
    gs's depth-first walk finishes the nodes in list order); None otherwise."""
    levels: dict[int, int] = {}
    known = levels.get
    for node in nodes:
        deepest = -1
        for tensor in node.inputs:
            for pred in tensor.inputs:
                level = known(id(pred))
                if level is None:
                    return None
                deepest = max(deepest, level)
        levels[id(node)] = deepest + 1
    return levels


def _producers(node: gs.Node, local: _Locality) -> list[gs.Node]:
    """Distinct producers of node's local inputs, in first-seen order (as gs's get_inputs)."""
    found: dict[int, gs.Node] = {}
    for tensor in node.inputs:
        if tensor.inputs and local(tensor):
            for pred in tensor.inputs:
                found.setdefault(id(pred), pred)
    return list(found.values())
