"""argsort/sort, cond_take, boolean masks, nms, roi_align and roi_pooling against MegEngine.
Data-dependent sizes are traced on one input and checked on others with different counts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx
import pytest

from tests.converters.harness import export_and_compare, lambda_net
from tests.helpers import FP32, assert_matches, ops, run_ort

RNG = np.random.default_rng(11)
FEATURES = RNG.uniform(-2, 2, (2, 4, 12, 16)).astype(np.float32)
SCORES = RNG.permutation(40).astype(np.float32) / 40  # distinct: tie order is unspecified


def _f():
    import megengine.functional as F
    return F


def export_and_run(factory: Callable[[], Any], trace_inputs: Sequence[np.ndarray],
                   *run_inputs: Sequence[np.ndarray], expect_ops: Sequence[str] = (),
                   tolerance: dict | None = None, **export_options: Any) -> onnx.ModelProto:
    """Trace on `trace_inputs`, export once, then compare onnxruntime with the TracedModule
    on every input set (shapes and values): a traced count baked in would show here."""
    import megengine as mge
    import megengine.traced_module as tm

    import tm2onnx

    mge.config.async_level = 0  # MegEngine's async CPU dispatch was seen computing wrong values
    module = factory()
    module.eval()
    traced = tm.trace_module(module, *[mge.Tensor(a) for a in trace_inputs])
    model = tm2onnx.export(traced, **export_options)
    for arrays in (trace_inputs, *run_inputs):
        expected = traced(*[mge.Tensor(a) for a in arrays])
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        feeds = {value.name: array for value, array in zip(model.graph.input, arrays)}
        reference = {out.name: t.numpy() for out, t in zip(model.graph.output, expected)}
        assert_matches(reference, run_ort(model, feeds), **(tolerance or FP32))
    missing = [op for op in expect_ops if op not in ops(model)]
    assert not missing, f"expected ONNX ops {missing} not in {sorted(set(ops(model)))}"
    return model


def output_dims(model: onnx.ModelProto, index: int = 0) -> list:
    dims = model.graph.output[index].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("shape", [(40,), (3, 40)], ids=["1d", "2d"])
def test_argsort_and_sort(megengine, descending, shape):
    scores = np.stack([RNG.permutation(SCORES) for _ in range(int(np.prod(shape[:-1])))])
    scores = scores.reshape(shape)
    F = _f()
    export_and_compare(lambda: lambda_net(lambda x: (F.argsort(x, descending=descending),
                                                     *F.sort(x, descending=descending))),
                       [scores], expect_ops=["TopK", "Cast"])


def test_argsort_dynamic_batch(megengine):
    F = _f()
    """k is read at run time with a dynamic batch (checked on another batch size)."""
    export_and_run(lambda: lambda_net(lambda x: F.argsort(x * 2, descending=True)),
                   [SCORES.reshape(4, 10)], [SCORES.reshape(2, 20)[:, :10].copy()],
                   expect_ops=["TopK", "Shape"], dynamic_batch=True)


def test_cond_take_counts(megengine):
    """Traced with 20 positives, run with 0, 3 and all: the count is a symbolic dim."""
    F = _f()
    x = RNG.uniform(-1, 1, (4, 10)).astype(np.float32)
    model = export_and_run(lambda: lambda_net(lambda v: F.cond_take(v > 0.25, v * 3)),
                           [x], [np.full_like(x, -1)], [np.abs(x) + 1], [x - 0.5],
                           expect_ops=["NonZero", "Gather"])
    assert output_dims(model, 0) == output_dims(model, 1) == ["cond_take_out_n"]


def test_cond_take_raw_opdef(megengine):
    """`apply(CondTake)` as a helper module importing MegEngine internals would trace it."""
    from megengine.core._imperative_rt.core2 import apply
    from megengine.core.ops import builtin

    x = RNG.uniform(-1, 1, (3, 7)).astype(np.float32)
    export_and_run(lambda: lambda_net(lambda v: tuple(apply(builtin.CondTake(), v, v > 0))),
                   [x], [x - 0.8], expect_ops=["NonZero"])


MASK_CASES = [
    pytest.param(lambda x: x[x > 0], id="full-mask"),
    pytest.param(lambda x: x[x[:, 0, 0, 0] > 0], id="batch-mask"),
    pytest.param(lambda x: x[:, x[0, :, 0, 0] > 0], id="channel-mask"),
    pytest.param(lambda x: x[x[:, :, 0, 0] > 0] * 2, id="2d-mask-then-mul"),
]


@pytest.mark.parametrize("fn", MASK_CASES)
def test_boolean_mask_getitem(megengine, fn):
    x = RNG.uniform(-1, 1, (5, 6, 3, 2)).astype(np.float32)
    other = RNG.uniform(-1, 1, (5, 6, 3, 2)).astype(np.float32) + 0.3
    export_and_run(lambda: lambda_net(fn), [x], [other], [np.abs(other)],
                   expect_ops=["Compress"])


def test_boolean_mask_refusal(megengine):
    from tm2onnx.errors import ConversionError

    x = RNG.uniform(-1, 1, (5, 6)).astype(np.float32)
    with pytest.raises(ConversionError, match="boolean mask index mixed"):
        export_and_compare(lambda: lambda_net(lambda v: v[v[:, 0] > 0, 1:]), [x])


def _boxes(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, 60, (count, 2))
    size = rng.uniform(5, 30, (count, 2))
    return np.concatenate([corner, corner + size], axis=1).astype(np.float32)


@pytest.mark.parametrize("max_output", [None, 7], ids=["all", "max7"])
@pytest.mark.parametrize("iou", [0.3, 0.6])
def test_nms(megengine, max_output, iou):
    """Kept indices equal MegEngine's, in its order (descending score)."""
    F = _f()
    net = lambda: lambda_net(lambda b, s: F.vision.nms(b, s, iou, max_output=max_output))
    model = export_and_run(net, [_boxes(40, 0), SCORES], [_boxes(40, 1), SCORES[::-1].copy()],
                           [np.tile(_boxes(1, 2), (40, 1)), SCORES],
                           expect_ops=["NonMaxSuppression"])
    assert output_dims(model) == ["nms_out_n"]


def test_nms_after_score_mask(megengine):
    """Boxes counted at run time (a score mask) and max_output=None: keep up to all of them."""
    F = _f()

    def forward(boxes, scores):
        keep = scores > 0.4
        return F.vision.nms(boxes[keep], scores[keep], 0.3)

    export_and_run(lambda: lambda_net(forward), [_boxes(40, 0), SCORES],
                   [_boxes(40, 4), SCORES[::-1] * 0.6], [_boxes(40, 5), SCORES + 0.5],
                   expect_ops=["Compress", "NonMaxSuppression", "Shape"])


@pytest.mark.parametrize("iou", [0.5, 0.4999])
def test_nms_threshold_boundary(megengine, iou):
    """IoU exactly at the threshold keeps the box (both suppress only above it)."""
    F = _f()
    boxes = np.asarray([[0, 0, 4, 1], [0, 0, 2, 1], [10, 10, 12, 12]], np.float32)  # IoU 0.5
    scores = np.asarray([0.9, 0.8, 0.7], np.float32)
    export_and_run(lambda: lambda_net(lambda b, s: F.vision.nms(b, s, iou, max_output=3)),
                   [boxes, scores], expect_ops=["NonMaxSuppression"])


def _rois(count: int, seed: int, batch: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-4, 14, (count, 2))  # some RoIs leave the 12x16 image
    size = rng.uniform(0.3, 12, (count, 2))
    index = rng.integers(0, batch, (count, 1))
    return np.concatenate([index, corner, corner + size], axis=1).astype(np.float32)


ROI_ALIGN_CASES = [
    pytest.param({"output_shape": (3, 3)}, id="default-aligned"),
    pytest.param({"output_shape": (2, 4), "sample_points": 3, "spatial_scale": 0.5}, id="s3-x0.5"),
    pytest.param({"output_shape": 4, "aligned": False}, id="not-aligned"),
    pytest.param({"output_shape": (2, 2), "aligned": False, "spatial_scale": 0.25,
                  "sample_points": 1}, id="not-aligned-x0.25-s1"),
]


@pytest.mark.parametrize("kwargs", ROI_ALIGN_CASES)
def test_roi_align(megengine, kwargs):
    F = _f()
    export_and_run(lambda: lambda_net(lambda x, r: F.vision.roi_align(x, r, **kwargs)),
                   [FEATURES, _rois(6, 0)], [FEATURES * 3, _rois(6, 1)], expect_ops=["RoiAlign"])


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "max"}, "max of weighted corners"),
    ({"sample_points": (2, 3)}, "one positive sampling_ratio"),
])
def test_roi_align_refusals(megengine, kwargs, message):
    from tm2onnx.errors import ConversionError

    F = _f()
    with pytest.raises(ConversionError, match=message):
        export_and_compare(lambda: lambda_net(
            lambda x, r: F.vision.roi_align(x, r, (2, 2), **kwargs)), [FEATURES, _rois(3, 0)])


def test_roi_align_needs_opset_16(megengine):
    from tm2onnx.errors import ConversionError

    F = _f()
    with pytest.raises(ConversionError, match="opset 16"):
        export_and_compare(lambda: lambda_net(lambda x, r: F.vision.roi_align(x, r, (2, 2))),
                           [FEATURES, _rois(3, 0)], opset=15)


def test_roi_pooling_average_refused(megengine):
    from tm2onnx.errors import ConversionError

    F = _f()
    with pytest.raises(ConversionError, match="ONNX has only MaxRoiPool"):
        export_and_compare(lambda: lambda_net(lambda x, r: F.vision.roi_pooling(
            x, r, (2, 2), mode="average")), [FEATURES, np.abs(_rois(3, 0))])


@pytest.mark.parametrize("output_shape, scale", [((2, 2), 1.0), ((3, 4), 0.5)])
def test_roi_pooling(megengine, output_shape, scale):
    F = _f()
    rois = np.abs(_rois(6, 3)) * [1, 1.5, 1, 1.5, 1]
    export_and_run(lambda: lambda_net(
        lambda x, r: F.vision.roi_pooling(x, r, output_shape, scale=scale)),
        [FEATURES, rois.astype(np.float32)], expect_ops=["MaxRoiPool"])


@pytest.fixture
def unpatched(megengine):
    """MegEngine functions captured before tracing, as a helper module that imported them by
    name holds them: their bodies are traced below the function level, as raw apply(OpDef)."""
    from megengine.functional import math, vision

    return {"argsort": math.argsort, "sort": math.sort, "nms": vision.nms,
            "roi_align": vision.roi_align, "roi_pooling": vision.roi_pooling}


def test_raw_opdefs_detection(megengine, unpatched):
    """apply(Argsort), apply(NMSKeep), apply(ROIAlign), apply(ROIPooling)."""
    fn = unpatched

    def forward(x, rois, boxes, scores):
        return (fn["argsort"](scores, descending=True), *fn["sort"](scores),
                fn["nms"](boxes, scores, 0.3, max_output=12),
                fn["roi_align"](x, rois, (3, 2), sample_points=2, aligned=False),
                fn["roi_pooling"](x, np.abs(rois) * 0.8, (2, 3), scale=0.5))

    model = export_and_run(lambda: lambda_net(forward),
                           [FEATURES, _rois(6, 0), _boxes(40, 0), SCORES],
                           [FEATURES * 2, _rois(6, 1), _boxes(40, 3), SCORES[::-1].copy()],
                           expect_ops=["TopK", "NonMaxSuppression", "RoiAlign", "MaxRoiPool"])
    exprs = {prop.value for node in model.graph.node for prop in node.metadata_props
             if prop.key == "expr"}
    for opdef in ("Argsort", "NMSKeep", "ROIAlign", "ROIPooling"):
        assert any(opdef in text for text in exprs), f"{opdef} was not traced as a raw apply"
