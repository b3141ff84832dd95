"""Property: on random valid graphs (tests/test_fuzz_graphs.py) every transform either refuses
or keeps every output (onnxruntime, graph optimizations off), returns a model onnx.checker
accepts, and leaves the caller's model alone. CI runs a bounded, derandomized sample; a long
run: `TM2ONNX_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_transforms.py`."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.helpers import run_ort
from tests.test_fuzz_graphs import BATCH, PATTERN, graphs
from tm2onnx.errors import TransformBug, TransformError
from tm2onnx.runtime import random_feeds

EXAMPLES = int(os.environ.get("TM2ONNX_FUZZ_EXAMPLES", "25"))
# (transform, options, rtol, atol as a fraction of max|reference|)
TRANSFORMS = [
    ("fuse-conv-bn", {}, 1e-4, 1e-4),
    ("absorb-const", {}, 1e-4, 1e-4),
    ("cleanup", {}, 1e-4, 1e-4),
    ("fold-shapes", {}, 1e-4, 1e-4),
    ("cse", {}, 1e-4, 1e-4),
    ("merge-parallel-matmuls", {}, 1e-4, 1e-4),
    ("deploy", {}, 1e-4, 1e-4),
    ("fp16", {}, 2e-2, 2e-2),
    ("fp16-linear", {"fp16-linear": {"min_params": 1}}, 2e-2, 2e-2),
]
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check_transform(model: onnx.ModelProto, feeds, expected, name: str, options: dict,
                     rtol: float, atol: float) -> onnx.ModelProto | None:
    """The transformed model (None when the transform refused) after checking its outputs."""
    from tm2onnx.transforms import run_pipeline

    before = model.SerializeToString()
    try:
        result, _ = run_pipeline(model, [name], options=options)
    except TransformBug:
        raise
    except TransformError:
        return None  # a deliberate refusal is allowed
    assert model.SerializeToString() == before, f"{name} changed the caller's model"
    onnx.checker.check_model(result, full_check=True)
    assert [o.name for o in result.graph.output] == [o.name for o in model.graph.output]
    got = run_ort(result, feeds)
    for out, ref in expected.items():
        scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
        np.testing.assert_allclose(got[out], ref, rtol=rtol, atol=atol * scale,
                                   err_msg=f"{name} changed output {out}")
    return result


@FUZZ
@given(graphs())
def test_every_transform_refuses_or_preserves_outputs(model):
    feeds = random_feeds(model, seed=0, dims={"batch": BATCH})
    expected = run_ort(model, feeds)
    for name, options, rtol, atol in TRANSFORMS:
        _check_transform(model, feeds, expected, name, options, rtol, atol)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs())
def test_generator_makes_valid_runnable_graphs(model):
    """The generator itself: checker-valid models onnxruntime runs (else the property above
    would test nothing)."""
    onnx.checker.check_model(model, full_check=True)
    outputs = run_ort(model, random_feeds(model, seed=1, dims={"batch": BATCH}))
    assert outputs and all(np.all(np.isfinite(v)) for v in outputs.values())


# forced step -> the transform that must rewrite its tagged node away (or, for bn_alone,
# keep the BN as one node: no Mul+Add, no more nodes).
FORCED = [("slices", "fold-shapes"), ("unit", "fold-shapes"), ("bn_then_conv", "fuse-conv-bn"),
          ("matmul_flatten_bn", "fuse-conv-bn"), ("bn_alone", "fuse-conv-bn"),
          ("linear_rows", "fold-shapes"), ("shape_target", "fold-shapes"),
          ("parallel", "merge-parallel-matmuls"), ("gathers", "fold-shapes"),
          ("squeeze_pair", "fold-shapes"), ("flatten_reshape", "fold-shapes"),
          ("scaled_projection", "absorb-const")]
FORCED_EXAMPLES = max(12, EXAMPLES // 2)
MIN_SHARE = 0.6  # of the examples where the pattern was built, how many must be rewritten


@pytest.mark.parametrize("step, name", FORCED)
def test_forced_patterns_are_rewritten_and_keep_outputs(step, name):
    """Each rewrite of the last round, placed at a random spot of a random graph: outputs kept
    (the transform, then deploy) and the rewrite did happen in most examples (a fuzz entry
    that never reaches its rewrite could not fail)."""
    built, hits = [0], [0]

    @settings(max_examples=FORCED_EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(graphs(force=step))
    def run(model):
        feeds = random_feeds(model, seed=0, dims={"batch": BATCH})
        expected = run_ort(model, feeds)
        result = _check_transform(model, feeds, expected, name, {}, 1e-4, 1e-4)
        _check_transform(model, feeds, expected, "deploy", {}, 1e-4, 1e-4)
        tagged = {n.name for n in model.graph.node if n.name.endswith(PATTERN)}
        if not tagged:
            return
        built[0] += 1
        left = {n.name for n in result.graph.node} if result is not None else tagged
        if step == "bn_alone":  # kept as the one node it was, not decomposed
            hits[0] += tagged <= left and (result is None or
                                           len(result.graph.node) <= len(model.graph.node))
        else:
            hits[0] += not tagged & left

    run()
    assert built[0] >= FORCED_EXAMPLES // 2, f"{step}: the pattern was built {built[0]} times"
    assert hits[0] >= MIN_SHARE * built[0], f"{step}: rewritten in {hits[0]} of {built[0]}"
