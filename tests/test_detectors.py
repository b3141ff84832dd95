"""The detector fixtures of models/detectors.py end to end: traced on one image, exported once,
and checked against MegEngine on other images whose detection counts differ from the traced one
(shapes and values), so a count baked in at export fails here."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import pytest

from tests.helpers import FP32, assert_matches, ops, run_ort

CASES = [
    pytest.param("swin_shift", {"Slice", "Concat", "Softmax"}, id="swin_shift"),
    pytest.param("retina_post", {"Compress", "NonZero", "NonMaxSuppression"}, id="retina_post"),
    pytest.param("two_stage", {"TopK", "NonMaxSuppression", "RoiAlign"}, id="two_stage"),
]
RUNS = 4


def _trace(name: str, batch: int | None = None):
    import megengine as mge
    import megengine.traced_module as tm

    from models.detectors import build

    mge.config.async_level = 0  # MegEngine's async CPU dispatch was seen computing wrong values
    net, shape = build(name)
    shape = (batch, *shape[1:]) if batch else shape
    rng = np.random.default_rng(1)
    images = [rng.uniform(-1, 1, shape).astype(np.float32) * (1 + run) for run in range(RUNS)]
    return tm.trace_module(net, mge.Tensor(images[0])), images


def _check(traced, model: onnx.ModelProto, images: list[np.ndarray]) -> list[tuple]:
    """Compare every output on every image; return the output shapes per image."""
    import megengine as mge

    shapes = []
    for image in images:
        expected = traced(mge.Tensor(image))
        expected = expected if isinstance(expected, tuple) else (expected,)
        reference = {out.name: t.numpy() for out, t in zip(model.graph.output, expected)}
        assert_matches(reference, run_ort(model, {model.graph.input[0].name: image}), **FP32)
        shapes.append(tuple(array.shape for array in reference.values()))
    return shapes


@pytest.mark.parametrize("name, expect_ops", CASES)
def test_detector_matches_megengine(megengine, name, expect_ops):
    import tm2onnx

    traced, images = _trace(name)
    model = tm2onnx.export(traced)
    shapes = _check(traced, model, images)
    missing = expect_ops - set(ops(model))
    assert not missing, f"expected ONNX ops {sorted(missing)} not in {sorted(set(ops(model)))}"
    if name != "swin_shift":
        assert len(set(shapes)) > 1, f"every image gave the traced counts {shapes[0]}"
        for output in model.graph.output:  # the count is never declared as the traced one
            assert not output.type.tensor_type.shape.dim[0].HasField("dim_value"), output


def test_swin_shift_dynamic_batch(megengine):
    import tm2onnx

    traced, images = _trace("swin_shift", batch=2)
    model = tm2onnx.export(traced, dynamic_batch=True)
    _check(traced, model, [images[0], np.concatenate([images[1], images[2], images[3]])])


def test_two_stage_from_pickle(megengine, tmp_path):
    """The user's path: a pickled .tm exported by path."""
    import tm2onnx

    traced, images = _trace("two_stage")
    path = tmp_path / "two_stage.tm"
    path.write_bytes(pickle.dumps(traced))
    _check(traced, tm2onnx.export(str(path)), images[1:3])
