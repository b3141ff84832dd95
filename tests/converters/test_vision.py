"""roll, linspace with runtime pieces, remap and warp_perspective (GridSample) against
MegEngine; refusals for what GridSample cannot express."""

from __future__ import annotations

import numpy as np
import pytest

from tests.converters.harness import export_and_compare, lambda_net
from tests.converters.test_detection import export_and_run, output_dims
from tests.helpers import ops

RNG = np.random.default_rng(5)
IMAGE = RNG.uniform(-2, 2, (2, 3, 6, 9)).astype(np.float32)
# Sampling positions inside, on and beyond the borders; never exactly on a half pixel, where
# nearest rounding conventions could legitimately differ.
MAP = (RNG.uniform(-3, 12, (2, 5, 7, 2)) + 0.013).astype(np.float32)


def _f():
    import megengine.functional as F
    return F


ROLL_CASES = [
    pytest.param(lambda F, x: F.roll(x, 2, 1), id="axis1"),
    pytest.param(lambda F, x: F.roll(x, (-3, 3), (2, 3)), id="swin-shift"),
    pytest.param(lambda F, x: F.roll(x, (3, 3), (2, -1)), id="swin-reverse-neg-axis"),
    pytest.param(lambda F, x: F.roll(x, 20, 3), id="shift-beyond-size"),
    pytest.param(lambda F, x: F.roll(x, 5), id="flattened"),
    pytest.param(lambda F, x: F.roll(x, (6, 1), (2, 2)), id="full-turn-and-repeat-axis"),
]


@pytest.mark.parametrize("fn", ROLL_CASES)
def test_roll(megengine, fn):
    F = _f()
    export_and_compare(lambda: lambda_net(lambda x: fn(F, x)), [(2, 3, 6, 8)],
                       expect_ops=["Slice", "Concat"])


def test_roll_dynamic_batch(megengine):
    F = _f()
    x = RNG.uniform(-1, 1, (3, 2, 6, 8)).astype(np.float32)
    export_and_run(lambda: lambda_net(lambda v: F.roll(v, (-2, 2), (2, 3))), [x], [x[:2]],
                   expect_ops=["Concat"], dynamic_batch=True)


def test_roll_refuses_dynamic_batch_axis(megengine):
    from tm2onnx.errors import ConversionError

    F = _f()
    with pytest.raises(ConversionError, match="roll over an axis whose size is known only"):
        export_and_compare(lambda: lambda_net(lambda v: F.roll(v, 1, 0)), [(3, 4)],
                           dynamic_batch=True)


def test_linspace_static_is_folded(megengine):
    F = _f()
    model = export_and_compare(lambda: lambda_net(
        lambda x: x + F.linspace(0, x.shape[1] - 1, x.shape[1])), [(2, 7)])
    assert "Range" not in ops(model)


def test_linspace_runtime_batch(megengine):
    """RIFE-style grid from the input's shape, read at run time with a dynamic batch."""
    F = _f()
    x = RNG.uniform(-1, 1, (4, 3)).astype(np.float32)
    export_and_run(lambda: lambda_net(lambda v: F.linspace(-1.0, v.shape[0] * 0.5, v.shape[0])),
                   [x], [x[:1]], [np.concatenate([x, x])], expect_ops=["Range"],
                   dynamic_batch=True)


def test_linspace_data_dependent(megengine):
    """num from a cond_take count: a symbolic output dim, right for other counts."""
    F = _f()
    x = RNG.uniform(-1, 1, (10,)).astype(np.float32)
    model = export_and_run(lambda: lambda_net(
        lambda v: F.linspace(v.min(), 2.0, F.cond_take(v > 0, v)[0].shape[0])),
        [x], [x - 2], [x + 0.3], expect_ops=["Range", "NonZero", "Shape"])
    assert isinstance(output_dims(model)[0], str)


REMAP_CASES = [
    pytest.param({}, 17, id="replicate-linear"),
    pytest.param({"border_mode": "constant"}, 16, id="constant-zero"),
    pytest.param({"border_mode": "constant", "scalar": 1.5}, 17, id="constant-1.5"),
    pytest.param({"border_mode": "reflect"}, 17, id="reflect"),
    pytest.param({"interp_mode": "nearest"}, 17, id="nearest"),
    pytest.param({"border_mode": "constant", "interp_mode": "nearest", "scalar": -1.0}, 20,
                 id="constant-nearest-opset20"),
    pytest.param({}, 20, id="linear-opset20"),
]


@pytest.mark.parametrize("kwargs, opset", REMAP_CASES)
def test_remap(megengine, kwargs, opset):
    F = _f()
    export_and_run(lambda: lambda_net(lambda x, m: F.vision.remap(x, m, **kwargs)),
                   [IMAGE, MAP], [IMAGE * 2, MAP[::-1].copy()], expect_ops=["GridSample"],
                   opset=opset)


@pytest.mark.parametrize("kwargs, opset, message", [
    ({}, 15, "needs opset 16"),
    ({"border_mode": "wrap"}, 17, "border mode 'wrap'"),
    ({"border_mode": "reflect_101"}, 17, "border mode 'reflect_101'"),
])
def test_remap_refusals(megengine, kwargs, opset, message):
    from tm2onnx.errors import ConversionError

    F = _f()
    with pytest.raises(ConversionError, match=message):
        export_and_compare(lambda: lambda_net(lambda x, m: F.vision.remap(x, m, **kwargs)),
                           [IMAGE, MAP], opset=opset)


def _homographies(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mats = np.tile(np.eye(3), (count, 1, 1)) + rng.uniform(-0.15, 0.15, (count, 3, 3))
    mats[:, :2, 2] = rng.uniform(-2, 4, (count, 2))
    mats[:, 2, 2] = 1.0
    mats[:, 2, :2] = rng.uniform(-0.02, 0.02, (count, 2))
    return mats.astype(np.float32)


WARP_CASES = [
    pytest.param({}, id="replicate"),
    pytest.param({"border_mode": "constant", "border_val": 0.5}, id="constant-0.5"),
    pytest.param({"border_mode": "reflect"}, id="reflect"),
]


@pytest.mark.parametrize("kwargs", WARP_CASES)
def test_warp_perspective(megengine, kwargs):
    F = _f()
    export_and_run(lambda: lambda_net(
        lambda x, m: F.vision.warp_perspective(x, m, (5, 8), **kwargs)),
        [IMAGE, _homographies(2, 0)], [IMAGE, _homographies(2, 1)],
        expect_ops=["MatMul", "GridSample"])


def test_warp_perspective_dynamic_batch(megengine):
    F = _f()
    images = np.concatenate([IMAGE, IMAGE[::-1] * 2])
    export_and_run(lambda: lambda_net(lambda x, m: F.vision.warp_perspective(x, m, (5, 8))),
                   [IMAGE, _homographies(2, 0)], [images, _homographies(4, 1)],
                   expect_ops=["GridSample"], dynamic_batch=True)


def test_warp_perspective_mat_idx(megengine):
    F = _f()
    index = np.asarray([1, 0, 1], dtype=np.int32)
    export_and_run(lambda: lambda_net(
        lambda x, m, i: F.vision.warp_perspective(x, m, (4, 4), mat_idx=i)),
        [IMAGE, _homographies(3, 2), index], [IMAGE, _homographies(3, 3), index[::-1].copy()],
        expect_ops=["Gather", "GridSample"])


@pytest.mark.parametrize("kwargs, message", [
    ({"format": "NHWC"}, "format 'NHWC'"),
    ({"border_mode": "wrap"}, "border mode 'wrap'"),
])
def test_warp_perspective_refusals(megengine, kwargs, message):
    from tm2onnx.errors import ConversionError

    F = _f()
    image = IMAGE.transpose(0, 2, 3, 1).copy() if kwargs.get("format") == "NHWC" else IMAGE
    with pytest.raises(ConversionError, match=message):
        export_and_compare(lambda: lambda_net(
            lambda x, m: F.vision.warp_perspective(x, m, (4, 4), **kwargs)),
            [image, _homographies(2, 0)])


def test_correlation_even_kernel_refused(megengine):
    from tm2onnx.errors import ConversionError

    F = _f()
    with pytest.raises(ConversionError, match="use an odd kernel"):
        export_and_compare(lambda: lambda_net(
            lambda a, b: F.vision.correlation(a, b, kernel_size=2, max_displacement=1)),
            [(1, 2, 8, 8), (1, 2, 8, 8)])


CORRELATION_CASES = [
    pytest.param({}, id="default"),
    pytest.param({"max_displacement": 3, "pad_size": 3}, id="d3-pad3"),
    pytest.param({"kernel_size": 3, "max_displacement": 2, "stride2": 2, "pad_size": 2},
                 id="k3-d2-s2"),
    pytest.param({"kernel_size": 3, "max_displacement": 2, "stride1": 2, "pad_size": 1,
                  "is_multiply": False}, id="absdiff-stride1-2"),
]


@pytest.mark.parametrize("kwargs", CORRELATION_CASES)
def test_correlation(megengine, kwargs):
    F = _f()
    export_and_compare(lambda: lambda_net(lambda a, b: F.vision.correlation(a, b, **kwargs)),
                       [(2, 3, 9, 11), (2, 3, 9, 11)],
                       expect_ops=["Pad", "Slice", "ReduceSum", "AveragePool", "Concat"])


@pytest.fixture
def unpatched(megengine):
    """Functions captured before tracing (a helper module importing them by name): traced as
    raw apply(Linspace), apply(Remap), apply(WarpPerspective), apply(Correlation)."""
    from megengine.functional import tensor, vision

    return {"linspace": tensor.linspace, "remap": vision.remap,
            "warp_perspective": vision.warp_perspective, "correlation": vision.correlation}


def test_raw_opdefs_vision(megengine, unpatched):
    fn = unpatched

    def forward(x, m, mats):
        grid = fn["linspace"](x.min(), 2.0, m.shape[0] + 3)
        return (fn["remap"](x, m, border_mode="reflect"),
                fn["warp_perspective"](x, mats, (4, 5), border_mode="constant", border_val=0.25),
                grid, fn["correlation"](x, x * 2 - 1, max_displacement=2, pad_size=1))

    model = export_and_run(lambda: lambda_net(forward), [IMAGE, MAP, _homographies(2, 4)],
                           [IMAGE * 3, MAP[::-1].copy(), _homographies(2, 5)],
                           expect_ops=["GridSample", "MatMul", "Range"], opset=17)
    exprs = " ".join(prop.value for node in model.graph.node for prop in node.metadata_props
                     if prop.key == "expr")
    for opdef in ("Linspace", "Remap", "WarpPerspective", "Correlation"):
        assert opdef in exprs, f"{opdef} was not traced as a raw apply"


def test_remap_nearest_half_pixels(megengine):
    """Both round half-pixel positions to even (0.5 -> 0, 1.5 -> 2)."""
    F = _f()
    halves = np.stack(np.meshgrid(np.arange(-1, 9) + 0.5, np.arange(-1, 6) + 0.5), axis=-1)
    halves = np.broadcast_to(halves, (2, *halves.shape)).astype(np.float32)
    export_and_run(lambda: lambda_net(lambda x, m: F.vision.remap(x, m, interp_mode="nearest")),
                   [IMAGE, halves], expect_ops=["GridSample"])
