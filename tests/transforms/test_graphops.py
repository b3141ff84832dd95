"""graphops: the linear cleanup/toposort give exactly gs's node order and links (checked on
seeded random graphs, unsorted and with dead nodes), and may_fold is False only when gs's
fold_constants has nothing to do."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from tests.helpers import parse_model
from tm2onnx.transforms import graphops, to_graph
from tm2onnx.transforms.patterns import detach

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'


def random_graph(seed: int) -> gs.Graph:
    """Up to 30 nodes over shared tensors and constants, some dead, some reading an omitted
    input, one maybe writing a graph input, listed in a shuffled order half the time."""
    rng = random.Random(seed)
    inputs = [gs.Variable(f"in{i}", np.float32, [2]) for i in range(rng.randint(1, 3))]
    consts = [gs.Constant(f"c{i}", np.full(2, i, np.float32)) for i in range(3)]
    pool, nodes = inputs + consts, []
    for i in range(rng.randint(1, 30)):
        reads = [rng.choice(pool) for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.1:
            reads.append(gs.Variable.empty())
        writes = [gs.Variable(f"t{i}_{j}", np.float32, [2]) for j in range(rng.randint(1, 2))]
        nodes.append(gs.Node(rng.choice(["Add", "Relu", "Concat"]), f"n{i}", inputs=reads,
                             outputs=writes))
        pool += writes
    if rng.random() < 0.1:
        nodes.append(gs.Node("Relu", "writes_input", inputs=[pool[-1]], outputs=[inputs[0]]))
    outputs = rng.sample(pool[len(inputs):], k=min(len(pool) - len(inputs), rng.randint(1, 3)))
    if rng.random() < 0.5:
        rng.shuffle(nodes)
    return gs.Graph(nodes=nodes, inputs=inputs, outputs=outputs, opset=17)


def structure(graph: gs.Graph) -> tuple:
    """Node order with each node's tensors, and every tensor's producers and readers."""
    tensors = {t.name: t for n in graph.nodes for t in [*n.inputs, *n.outputs]}
    tensors.update((t.name, t) for t in [*graph.inputs, *graph.outputs])
    links = {name: ([n.name for n in t.inputs], [n.name for n in t.outputs])
             for name, t in tensors.items()}
    return ([(n.name, [t.name for t in n.inputs], [t.name for t in n.outputs])
             for n in graph.nodes], sorted(links.items()))


def outcome(sort: Callable[[gs.Graph], object], graph: gs.Graph) -> tuple | str:
    """The graph's structure after `sort`, or the error it raised (a cycle: gs refuses)."""
    try:
        sort(graph)
    except Exception as err:  # noqa: BLE001 — compared, not hidden
        return type(err).__name__
    return structure(graph)


@pytest.mark.parametrize("seed", range(100))
def test_cleanup_and_toposort_match_gs(seed):
    for ours, theirs in ((graphops.toposort, gs.Graph.toposort),
                         (graphops.tidy, lambda graph: graph.cleanup().toposort())):
        assert outcome(ours, random_graph(seed)) == outcome(theirs, random_graph(seed))


@pytest.mark.parametrize(("body", "foldable"), [
    ("y = Add (x, k)", False),
    ("two = Add (k, k)\n y = Mul (x, two)", True),                 # reads only constants
    ("s = Shape (x)\n y = Reshape (x, s)", True),                  # Shape of a known shape
    ("c = Constant <value_float = 2.0> ()\n y = Mul (x, c)", True),
])
def test_may_fold_only_when_gs_would_fold(body, foldable):
    graph = to_graph(parse_model(f"""{HEADER}
    g (float[2,3] x) => (float[2,3] y) <float[3] k = {{1, 2, 3}}> {{ {body} }}"""))
    assert graphops.may_fold(graph) is foldable


def test_detach_finds_the_node_by_identity():
    # gs's clear() would remove `twin` instead: list.remove compares nodes with ==.
    k, x, y = gs.Constant("k", np.ones(2, np.float32)), gs.Variable("x"), gs.Variable("y")
    twin = gs.Node("Add", "n", inputs=[x, k], outputs=[y])
    node = gs.Node("Add", "n", inputs=[x, k], outputs=[y])
    detach(node)
    assert k.outputs[0] is twin and len(k.outputs) == 1 and y.inputs[0] is twin
    assert not node.inputs and not node.outputs
