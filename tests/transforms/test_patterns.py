"""patterns: the shared graph-walking helpers answer from gs's incremental producer/consumer
links (no rescans), and the rewiring helpers keep tensor names and graph outputs."""

from __future__ import annotations

import numpy as np

from tests.helpers import parse_model
from tm2onnx.transforms import to_graph
from tm2onnx.transforms.patterns import (
    adopt_outputs,
    chain,
    const_array,
    consumers,
    is_graph_output,
    name_maker,
    nodes_of,
    only_consumer,
    producer,
    replace_uses,
    uses_count,
)

MODEL = """<ir_version: 10, opset_import: ["" : 17]>
g (float[2] x) => (float[2] y, float[2] sq) <float[2] c = {1, 2}> {
    k = Constant <value = float[2] {3, 4}> ()
    a = Add (x, c)
    sq = Mul (a, a)
    b = Mul (a, k)
    y = Relu (b)
}"""


def test_queries():
    graph = to_graph(parse_model(MODEL))
    add, square, mul, relu = nodes_of(graph, "Add", "Mul", "Relu")
    a, b, y = (graph.tensors()[n] for n in "aby")
    assert consumers(a) == [square, mul] and uses_count(a) == 3  # Mul(a, a) reads it twice
    assert producer(b) is mul and producer(b, op="Add") is None
    assert only_consumer(b, graph) is relu and only_consumer(y, graph) is None
    assert is_graph_output(graph, y) and not is_graph_output(graph, b)
    np.testing.assert_array_equal(const_array(mul.inputs[1]), [3, 4])
    np.testing.assert_array_equal(const_array(add.inputs[1]), [1, 2])
    assert const_array(a) is None
    assert chain(mul, "Mul", "Relu") == [mul, relu] and chain(add, "Add", "Mul") is None


def test_rewiring_keeps_names():
    graph = to_graph(parse_model(MODEL))
    _, _, mul, relu = nodes_of(graph, "Add", "Mul", "Relu")
    adopt_outputs(mul, relu)  # drop the Relu: Mul now writes `y`
    assert [t.name for t in mul.outputs] == ["y"] and not relu.inputs and not relu.outputs
    a, x = graph.tensors()["a"], graph.inputs[0]
    assert replace_uses(a, x) == 3 and not a.outputs
    fresh = name_maker(graph)
    assert fresh("x") == "x_1" and fresh("x") == "x_2" and fresh("new") == "new"


def test_name_maker_resumes_its_count_per_base():
    from tm2onnx.transforms.patterns import NameMaker

    fresh = NameMaker({"a", "a_1", "a_3", "b"})
    names = [fresh("a") for _ in range(1000)]
    assert names[:3] == ["a_2", "a_4", "a_5"] and len(set(names)) == 1000
    assert fresh.probes <= 3  # a, a_1, a_3: each taken name is probed once, not once per call
    assert fresh("b") == "b_1" and fresh("c") == "c" and fresh("c") == "c_1"
