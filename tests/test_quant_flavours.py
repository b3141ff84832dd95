"""Fake-quant and observer flavours beyond FakeQuantize / TQT / min-max (test_quant.py): LSQ,
histogram, passive (EasyQuant), and per-channel weight scales on each layer's output axis
(ConvTranspose: axis 1), each within one quantization step of MegEngine; refusals."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import onnx
import pytest

from tests.test_quant import _module, _stubbed, check_steps, inputs_for

SHAPES = [(2, 3, 6, 6)]
DECONV = _module("ConvTransposeBnRelu2d", 3, 4, 3, stride=2)


def _traced(net: Any, shapes: list[tuple[int, ...]]) -> Any:
    import megengine as mge
    import megengine.traced_module as tm

    net.eval()
    traced = tm.trace_module(net, *[mge.Tensor(np.zeros(s, np.float32)) for s in shapes])
    traced.eval()
    return traced


def _recalibrated(make: Callable[[], Any], qconfig: Any, adjust: Callable[[Any], None]) -> Any:
    """EMA-calibrated QAT net whose quantizers are then replaced by `qconfig`'s (reset_qconfig
    seeds them with the calibrated scales), adjusted as training / a scale search would."""
    from megengine.quantization import reset_qconfig

    from models.quant import calibrated_qat

    net = reset_qconfig(calibrated_qat(_stubbed(make), *SHAPES), qconfig)
    for module in net.modules():
        adjust(module)
    return _traced(net, SHAPES)


def _lsq_step(module: Any) -> None:
    """LSQ learns its step size; move it off the observer's scale, as training would."""
    from megengine.quantization import LSQ

    if isinstance(module, LSQ):
        module.step_size[...] = module.step_size * 1.07


def _easyquant_scale(module: Any) -> None:
    """apply_easy_quant searches 0.8x-1.2x of each passive observer's scale; pick one."""
    from megengine.quantization import PassiveObserver

    if isinstance(module, PassiveObserver):
        module.scale = module.orig_scale * 1.1


@pytest.mark.parametrize("make, int8_runs", [
    (_module("ConvBnRelu2d", 3, 8, 3, padding=1), True),
    (DECONV, False),  # MegEngine 1.13 cannot run int8 ConvTranspose with bias / ReLU
], ids=["conv-bn-relu", "deconv-bn-relu"])
def test_lsq_and_passive(megengine, make, int8_runs):
    """LSQ (learned step size) and passive observers (EasyQuant) export their own scales: the
    QAT forward within one step; passive also the int8 model (else the QAT forward again).
    MegEngine 1.13's `quantize` fails on LSQ (a zero point for symmetric qint8)."""
    from megengine.quantization import LSQ, QConfig, passive_qconfig

    from models.quant import int8_version

    lsq = QConfig(weight_observer=None, act_observer=None,
                  weight_fake_quant=partial(LSQ, dtype="qint8_narrow"),
                  act_fake_quant=partial(LSQ, dtype="qint8"))
    check_steps(_recalibrated(make, lsq, _lsq_step), inputs_for(SHAPES))
    traced = _recalibrated(make, passive_qconfig, _easyquant_scale)
    check_steps(traced, inputs_for(SHAPES))
    check_steps(int8_version(traced), inputs_for(SHAPES), reference=None if int8_runs else traced)


def test_histogram_observer(megengine):
    """HistogramObserver keeps recording in eval mode (its forward ignores `enabled`), so the
    QAT forward moves its scales as it runs; the export holds the scales at export time, which
    are what `quantize` deploys: compared with the int8 model."""
    from megengine.quantization import (
        FakeQuantize,
        HistogramObserver,
        MinMaxObserver,
        QConfig,
        calibration_qconfig,
    )

    from models.quant import calibrated_qat, int8_version

    fake_quant = QConfig(weight_observer=partial(MinMaxObserver, dtype="qint8_narrow"),
                         act_observer=partial(HistogramObserver, dtype="qint8"),
                         weight_fake_quant=partial(FakeQuantize, dtype="qint8_narrow"),
                         act_fake_quant=partial(FakeQuantize, dtype="qint8"))
    make = _module("ConvBnRelu2d", 3, 8, 3, padding=1)
    for qconfig in (fake_quant, calibration_qconfig):
        traced = _traced(calibrated_qat(_stubbed(make), *SHAPES, qconfig=qconfig), SHAPES)
        int8 = int8_version(traced)
        check_steps(traced, inputs_for(SHAPES), reference=int8)
        check_steps(int8, inputs_for(SHAPES))


class PerChannel:
    """A weight observer with one scale per index of `axes` (MegEngine 1.13's own observers
    are per-tensor; users write per-channel ones like this), shaped to broadcast."""

    def __new__(cls, axes: tuple[int, ...], **kwargs: Any) -> Any:
        import megengine.functional as F
        from megengine.quantization import MinMaxObserver
        from megengine.quantization.utils import QuantMode, create_qparams

        class _PerChannel(MinMaxObserver):
            def forward(self, x):
                magnitude = F.abs(x.detach())
                for dim in reversed(range(x.ndim)):
                    magnitude = magnitude if dim in axes else F.max(magnitude, dim, True)
                self.absmax = magnitude if getattr(self, "absmax", None) is None else \
                    F.maximum(self.absmax, magnitude)
                return x

            def get_qparams(self):
                scale = F.maximum(self.absmax / ((self.qmax - self.qmin) / 2), self.scale_limit)
                return create_qparams(QuantMode.SYMMERTIC, self.dtype, scale=scale)

        return _PerChannel(dtype="qint8_narrow", **kwargs)


def _per_channel(*axes: int) -> Any:
    from megengine.quantization import ExponentialMovingAverageObserver, FakeQuantize, QConfig

    return QConfig(weight_observer=partial(PerChannel, axes),
                   act_observer=partial(ExponentialMovingAverageObserver, dtype="qint8"),
                   weight_fake_quant=partial(FakeQuantize, dtype="qint8_narrow"),
                   act_fake_quant=partial(FakeQuantize, dtype="qint8"))


@pytest.mark.parametrize("make, shapes, observer_axis, onnx_axis", [
    (_module("Conv2d", 3, 8, 3, padding=1, bias=False), SHAPES, 0, 0),
    (DECONV, SHAPES, 1, 1),
    (_module("ConvTranspose2d", 4, 6, 3, stride=2, groups=2, bias=False), [(2, 4, 5, 5)], 2, 1),
    (_module("Linear", 12, 5, bias=False), [(4, 12)], 0, 0),
    (_module("BatchMatMulActivation", 2, 6, 5, bias=False), [(2, 6, 3)], 1, 1),
], ids=["conv", "deconv", "deconv-g2-shared", "linear", "bmm"])
def test_per_channel_weights(megengine, make, shapes, observer_axis, onnx_axis):
    """The weight DequantizeLinear is per-channel on the ONNX weight's output axis (for a
    grouped ConvTranspose, scales shared by the groups are per axis 1 of (in, out/g, k, k)).
    No bias but where BN folds one shaped (1, out, 1, 1): MegEngine's fake_quant_bias
    broadcasts a per-channel (out, 1, ...) weight scale against it and fails."""
    from tests.test_quant import traced_qat

    traced = traced_qat(make, shapes, qconfig=_per_channel(observer_axis))
    assert traced.inner.get_weight_qparams().scale.size > 1
    # unoptimized: onnxruntime's x86 int8 kernels without VNNI saturate on signed (QuantStub)
    # inputs (docs/quantization.md); the kernels are checked after ReLU in test_quant.py
    model = check_steps(traced, inputs_for(shapes), levels=("disable",))
    # with uint8 weights (U8U8 kernels, no saturation) the optimized session is checked too;
    # onnxruntime's QLinearMatMul takes one weight zero point: refused for batched matmul
    import tm2onnx
    from tm2onnx.errors import ConversionError

    if "BatchMatMul" in type(traced.inner).__name__:
        with pytest.raises(ConversionError, match="QLinearMatMul"):
            tm2onnx.export(traced, qdq_weights="uint8")
    else:
        check_steps(traced, inputs_for(shapes), levels=("disable", "all"), qdq_weights="uint8")
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"
                 and n.input[0].endswith("weight_quantized")]
    assert [onnx.helper.get_attribute_value(a) for n in weight_dq for a in n.attribute
            if a.name == "axis"] == [onnx_axis]


@pytest.mark.parametrize("axes", [(0,), (0, 2)], ids=["per-group", "grouped-out-channels"])
def test_per_channel_refusals(megengine, axes):
    """Scales per group (g == out/g here, so the count alone would pass), or per output channel
    of a grouped ConvTranspose (spread over two axes of ONNX's (in, out/g, k, k) weight), have
    no per-axis DequantizeLinear: refused by name."""
    import tm2onnx
    from tests.test_quant import traced_qat
    from tm2onnx.errors import ConversionError

    traced = traced_qat(_module("ConvTranspose2d", 4, 4, 3, groups=2, bias=False), [(2, 4, 5, 5)],
                        qconfig=_per_channel(*axes))
    with pytest.raises(ConversionError, match="inner: weight scale of shape"):
        tm2onnx.export(traced)
