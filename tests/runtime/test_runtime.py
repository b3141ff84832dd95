"""runtime/: the comparison that every validation rests on, seeded feeds, and sessions."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from tests.helpers import parse_model
from tm2onnx.errors import ValidationError
from tm2onnx.runtime import compare, make_session, random_feeds, run_model

DYNAMIC = parse_model('''<ir_version: 10, opset_import: ["" : 17]>
g (float[batch, 3] x, int32[2] k) => (float[batch, 3] y) { y = Relu (x) }''')


def test_compare_passes_within_and_fails_beyond_tolerance():
    ref = {"y": np.array([1.0, -2.0, 0.0], np.float32)}
    close = compare(ref, {"y": ref["y"] + 1e-6}, rtol=1e-4, atol=1e-5)
    far = compare(ref, {"y": ref["y"] + np.float32(1e-3)}, rtol=1e-4, atol=1e-5)
    assert close and not far
    assert far.diffs[0].max_abs == pytest.approx(1e-3, rel=1e-3)
    assert "FAIL: 0/1" in str(far) and "PASS: 1/1" in str(close)


def test_compare_reports_shape_missing_and_nan():
    ref = {"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32),
           "c": np.array([np.nan, 1.0], np.float32)}
    got = {"a": np.zeros(4, np.float32), "c": np.array([np.nan, 1.0], np.float32)}
    result = compare(ref, got, rtol=0, atol=0)
    by_name = {d.name: d for d in result.diffs}
    assert "shape (4,) != (3,)" in by_name["a"].problem
    assert "missing" in by_name["b"].problem
    assert by_name["c"].passed  # NaN where the reference has NaN is a match
    assert not compare({"c": ref["c"]}, {"c": np.array([0.0, 1.0], np.float32)},
                       rtol=0, atol=0)


def test_random_feeds_are_seeded_and_bind_symbolic_dims():
    first = random_feeds(DYNAMIC, seed=3, dims={"batch": 4})
    again = random_feeds(DYNAMIC, seed=3, dims={"batch": 4})
    assert first["x"].shape == (4, 3) and first["k"].dtype == np.int32
    np.testing.assert_array_equal(first["x"], again["x"])
    with pytest.raises(ValidationError, match="symbolic dim 'batch' .* --dim batch=1"):
        random_feeds(DYNAMIC, seed=0)


def test_run_model_gives_outputs_by_name():
    feeds = random_feeds(DYNAMIC, seed=0, dims={"batch": 2})
    out = run_model(DYNAMIC, feeds, opt_level="disable")
    np.testing.assert_array_equal(out["y"], np.maximum(feeds["x"], 0))


def test_cuda_needs_its_provider():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert "CUDAExecutionProvider" in make_session(DYNAMIC, device="cuda").get_providers()
    else:
        with pytest.raises(ValidationError, match="no CUDAExecutionProvider .*tm2onnx\\[gpu\\]"):
            make_session(DYNAMIC, device="cuda")


def test_merge_keeps_the_worst_case_and_the_true_mean():
    from tm2onnx.runtime.compare import merge

    ref = {"y": np.zeros(4, np.float32)}
    runs = [compare(ref, {"y": np.full(4, err, np.float32)}, rtol=0, atol=0.5)
            for err in (0.1, 0.2, 0.6)]
    merged = runs[0]
    for index, run in enumerate(runs[1:], start=1):
        merged = merge(merged, run, runs=index)
    worst = merged.diffs[0]
    assert worst.max_abs == pytest.approx(0.6) and not worst.passed
    assert worst.mean_abs == pytest.approx(0.3)
