"""Issue 14: one module called with a loop count that differs per call (DeFCN's 3-D max filter
over 2 or 3 FPN levels). MegEngine records the filter's exprs once, at its first call, and
replays them on every call; the export computes what the TracedModule computes, at batch 1, 2
and 5, and leaves the user's graph as traced."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import ops, run_ort

# pattern -> depth of the filter's first call (its graph loops that many times on every call)
FIRST_DEPTH = {"max_filtering": 2, "max_filtering_middle_first": 3}
REPLAY_WARNING = r"replays the exprs MegEngine recorded at the module's first call"


def _reference(traced, arrays):
    import megengine as mge

    return [np.asarray(t.numpy()) for t in traced(*[mge.Tensor(a) for a in arrays])]


def _run(model, arrays):
    feeds = {value.name: a for value, a in zip(model.graph.input, arrays)}
    got = run_ort(model, feeds)
    return [got[o.name] for o in model.graph.output]


def _assert_close(reference, got):
    for ref, out in zip(reference, got, strict=True):
        assert ref.shape == out.shape
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def _export(traced, **options):
    import tm2onnx

    with pytest.warns(UserWarning, match=REPLAY_WARNING):
        return tm2onnx.export(traced, **options)


@pytest.mark.parametrize("name", sorted(FIRST_DEPTH))
def test_loop_count_per_call_matches_megengine(megengine, name):
    """On main: refused by the shape guard (ONNX infers [1, 8, 2, 8, 8], MegEngine traced
    [1, 8, 3, 8, 8])."""
    from models.shape_patterns import build

    traced, arrays = build(name)
    model = _export(traced)
    reference = _reference(traced, arrays)
    _assert_close(reference, _run(model, arrays))
    declared = [[d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output]
    assert declared == [list(r.shape) for r in reference]
    # every call replays the first call's loop: one ReduceMax per recorded depth plane
    assert ops(model).count("ReduceMax") == 3 * FIRST_DEPTH[name]
    assert ops(model).count("MaxPool") == 3


@pytest.mark.parametrize("name", sorted(FIRST_DEPTH))
def test_loop_count_per_call_with_dynamic_batch(megengine, name):
    from models.shape_patterns import build, inputs

    traced, _ = build(name)
    model = _export(traced, dynamic_batch=True)
    for batch in (1, 2, 5):
        arrays = inputs(name, seed=batch, batch=batch)
        _assert_close(_reference(traced, arrays), _run(model, arrays))


def test_replayed_call_leaves_the_traced_graph_as_it_was(megengine):
    """The caller's nodes take the replayed shapes during the export only."""
    from models.shape_patterns import build

    traced, _ = build("max_filtering")
    graphs = [traced.graph, *traced.filt.argdef_graph_map.values()]

    def shapes():
        return [(node.name, node.shape) for graph in graphs for expr in graph.exprs()
                for node in expr.outputs if hasattr(node, "shape")]

    before = shapes()
    assert ("filt_1_out", (1, 8, 3, 8, 8)) in before  # the eager trace of the 3-level call
    _export(traced)
    assert shapes() == before
