"""Property: on random valid graphs (tests/test_fuzz_graphs.py) every transform either refuses
or keeps every output (onnxruntime, graph optimizations off), returns a model onnx.checker
accepts, and leaves the caller's model alone. CI runs a bounded, derandomized sample; a long
run: `TM2ONNX_FUZZ_EXAMPLES=5000 pytest tests/test_fuzz_transforms.py`."""

from __future__ import annotations

import os

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings

from tests.helpers import run_ort
from tests.test_fuzz_graphs import BATCH, graphs
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
    ("deploy", {}, 1e-4, 1e-4),
    ("fp16", {}, 2e-2, 2e-2),
    ("fp16-linear", {"fp16-linear": {"min_params": 1}}, 2e-2, 2e-2),
]
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _check_transform(model: onnx.ModelProto, feeds, expected, name: str, options: dict,
                     rtol: float, atol: float) -> None:
    from tm2onnx.transforms import run_pipeline

    before = model.SerializeToString()
    try:
        result, _ = run_pipeline(model, [name], options=options)
    except TransformBug:
        raise
    except TransformError:
        return  # a deliberate refusal is allowed
    assert model.SerializeToString() == before, f"{name} changed the caller's model"
    onnx.checker.check_model(result, full_check=True)
    assert [o.name for o in result.graph.output] == [o.name for o in model.graph.output]
    got = run_ort(result, feeds)
    for out, ref in expected.items():
        scale = max(1.0, float(np.max(np.abs(ref)))) if ref.size else 1.0
        np.testing.assert_allclose(got[out], ref, rtol=rtol, atol=atol * scale,
                                   err_msg=f"{name} changed output {out}")


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
