"""The deploy pipeline stays linear, checked by counting (never timing): whole-graph work (gs
cleanup/toposort/folding/copies, shape inference, tensor maps) runs a fixed number of times per
pipeline whatever the graph size, and no node is looked up by == in a shared reader list."""

from __future__ import annotations

import collections
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from tests.helpers import FP32, assert_same_function, init_text, ops, parse_model
from tm2onnx.transforms import run_pipeline

HEADER = '<ir_version: 10, opset_import: ["" : 17]>'
# Whole-graph operations: (owner, attribute) pairs whose calls are counted.
GS_CALLS = [(gs.Graph, "cleanup"), (gs.Graph, "toposort"), (gs.Graph, "fold_constants"),
            (gs.Graph, "copy"), (gs.Graph, "tensors"), (gs, "import_onnx"), (gs, "export_onnx"),
            (onnx.shape_inference, "infer_shapes")]


def ladder(blocks: int, rng: np.random.Generator) -> onnx.ModelProto:
    """Blocks of Conv -> BN (fused) -> Mul by a scalar every block shares (absorbed) -> Relu
    -> BN with nothing to fold into (kept as one node) -> Add
    residual, plus a dead Neg per block for cleanup."""
    inits, lines, x = ["float k = {0.5}"], [], "x"
    for i in range(blocks):
        inits.append(init_text(f"w{i}", rng.normal(size=(2, 2, 1, 1)).astype(np.float32)))
        for bn in (f"p{i}", f"q{i}"):
            inits += [init_text(f"{bn}s", rng.uniform(0.5, 2, 2).astype(np.float32)),
                      init_text(f"{bn}b", rng.uniform(-1, 1, 2).astype(np.float32)),
                      init_text(f"{bn}m", rng.uniform(-1, 1, 2).astype(np.float32)),
                      init_text(f"{bn}v", rng.uniform(0.5, 2, 2).astype(np.float32))]
        lines += [f"c{i} = Conv ({x}, w{i})",
                  f"b{i} = BatchNormalization (c{i}, p{i}s, p{i}b, p{i}m, p{i}v)",
                  f"m{i} = Mul (b{i}, k)",
                  f"r{i} = Relu (m{i})",
                  f"d{i} = BatchNormalization (r{i}, q{i}s, q{i}b, q{i}m, q{i}v)",
                  f"dead{i} = Neg (r{i})",
                  f"a{i} = Add (d{i}, {x})"]
        x = f"a{i}"
    lines.append(f"y = Identity ({x})")
    body = "\n        ".join(lines)
    return parse_model(f"""{HEADER}
    g (float[1,2,3,3] x) => (float[1,2,3,3] y) <{", ".join(inits)}> {{
        {body}
    }}""")


def count_calls(monkeypatch: pytest.MonkeyPatch) -> collections.Counter:
    """Count GS_CALLS, tensor_map wherever a transforms module bound it, and Node.__eq__."""
    calls: collections.Counter = collections.Counter()

    def counting(owner: object, attribute: str, label: str) -> None:
        original = getattr(owner, attribute)

        def wrapper(*args, **kwargs):
            calls[label] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(owner, attribute, wrapper)

    for owner, attribute in GS_CALLS:
        counting(owner, attribute, attribute)
    for name, module in list(sys.modules.items()):
        if name.startswith("tm2onnx.transforms") and hasattr(module, "tensor_map"):
            counting(module, "tensor_map", "tensor_map")
    counting(gs.Node, "__eq__", "Node.__eq__")
    return calls


def test_deploy_does_whole_graph_work_a_fixed_number_of_times(monkeypatch, rng):
    counts = {}
    for blocks in (3, 30):
        model = ladder(blocks, rng)
        calls = count_calls(monkeypatch)
        out, reports = run_pipeline(model, ["deploy"])
        monkeypatch.undo()
        counts[blocks] = dict(calls)
        # Only the BN after each Relu stays (nothing to fold it into), as one node.
        assert ops(out).count("BatchNormalization") == blocks, [str(r) for r in reports]
        assert "Neg" not in ops(out)
    assert counts[3] == counts[30]
    calls = counts[30]
    # A flat graph never reaches gs's cleanup/toposort/fold_constants/copy (slow per node, or a
    # whole copy plus an onnxruntime session); shape inference runs once per transform at most,
    # each time on one export (which walks gs's tensors() once), as does the final export.
    assert not any(calls.get(name) for name in ("cleanup", "toposort", "fold_constants", "copy",
                                                "Node.__eq__")), calls
    inferred = calls.get("infer_shapes", 0)
    assert inferred <= 2
    assert calls["import_onnx"] == 1
    assert calls["tensors"] == calls["export_onnx"] == 1 + inferred
    assert calls["tensor_map"] <= 10


def test_ladder_keeps_its_function(rng):
    model = ladder(3, rng)
    out, _ = run_pipeline(model, ["deploy"])
    assert_same_function(model, out, **FP32)


def test_fresh_names_from_unnamed_nodes_cost_one_probe_each(monkeypatch, rng):
    # Regression: every BatchNormalization here is unnamed, so each fold asks for ".weight",
    # ".s", ... again; probing "_1", "_2", ... from the start each time was quadratic.
    from tm2onnx.transforms import patterns

    made: list[tuple[patterns.NameMaker, int]] = []
    original = patterns.name_maker

    def spy(graph: gs.Graph) -> patterns.NameMaker:
        maker = original(graph)
        made.append((maker, len(maker.used)))
        return maker

    for name, module in list(sys.modules.items()):
        if name.startswith("tm2onnx.transforms.") and hasattr(module, "name_maker"):
            monkeypatch.setattr(module, "name_maker", spy)
    model = ladder(40, rng)
    assert not any(node.name for node in model.graph.node)
    run_pipeline(model, ["deploy"])
    names = sum(len(maker.used) - start for maker, start in made)
    probes = sum(maker.probes for maker, _ in made)
    assert names >= 80 and probes <= names, (names, probes)
