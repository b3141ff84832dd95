"""Conv converters against MegEngine: strides, padding, dilation, groups, depthwise, no bias."""

from __future__ import annotations

import pytest

from tests.converters.harness import export_and_compare


def _modules():
    import megengine.module as M
    return M


CASES = [
    pytest.param(lambda M: M.Conv2d(3, 8, 3, padding=1), (1, 3, 16, 16), "Conv", id="conv-g1"),
    pytest.param(lambda M: M.Conv2d(8, 8, 3, groups=4, bias=False), (1, 8, 9, 9), "Conv",
                 id="conv-g4-nobias"),
    pytest.param(lambda M: M.Conv2d(8, 8, 3, groups=8, stride=2, padding=1), (2, 8, 10, 10),
                 "Conv", id="conv-depthwise-s2"),
    pytest.param(lambda M: M.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2), dilation=2),
                 (1, 4, 15, 17), "Conv", id="conv-dilated-rect"),
    pytest.param(lambda M: M.Conv1d(4, 6, 3, padding=1, stride=2), (2, 4, 11), "Conv",
                 id="conv1d"),
    pytest.param(lambda M: M.Conv1d(4, 8, 3, groups=2, bias=False), (2, 4, 11), "Conv",
                 id="conv1d-g2", marks=pytest.mark.xfail(
                     strict=True, reason="MegEngine 1.13's own Conv1d forward asserts on groups>1")),
    pytest.param(lambda M: M.ConvTranspose2d(4, 6, 3, stride=2, padding=1), (1, 4, 7, 7),
                 "ConvTranspose", id="deconv"),
    pytest.param(lambda M: M.ConvTranspose2d(4, 8, 2, stride=2, groups=2, bias=False),
                 (1, 4, 5, 5), "ConvTranspose", id="deconv-g2"),
    pytest.param(lambda M: M.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1),
                 (1, 4, 7, 7), "ConvTranspose", id="deconv-output-padding"),
    pytest.param(lambda M: M.Conv2d(3, 4, 3, padding=2, padding_mode="reflect"), (1, 3, 8, 9),
                 "Pad", id="conv-reflect"),
    pytest.param(lambda M: M.Conv2d(3, 4, 3, padding=1, padding_mode="replicate"),
                 (1, 3, 8, 9), "Pad", id="conv-replicate"),
    pytest.param(lambda M: M.Conv1d(3, 4, 3, padding=1, padding_mode="reflect"), (1, 3, 9),
                 "Pad", id="conv1d-reflect"),
    pytest.param(lambda M: M.Conv3d(3, 4, 3, padding=1, stride=(1, 2, 2)), (1, 3, 5, 8, 8),
                 "Conv", id="conv3d"),
    pytest.param(lambda M: M.ConvTranspose3d(3, 4, 2, stride=2), (1, 3, 3, 4, 4),
                 "ConvTranspose", id="deconv3d"),
]


@pytest.mark.parametrize("factory, shape, op", CASES)
def test_conv_module(megengine, factory, shape, op):
    export_and_compare(lambda: factory(_modules()), [shape], expect_ops=[op])


def test_functional_conv2d(megengine):
    import megengine.functional as F
    import megengine.module as M
    import numpy as np

    class Net(M.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(1)
            self.w = megengine.Parameter(rng.normal(size=(6, 3, 3, 3)).astype("float32"))
            self.b = megengine.Parameter(rng.normal(size=(1, 6, 1, 1)).astype("float32"))

        def forward(self, x):
            return F.conv2d(x, self.w, self.b, stride=2, padding=1)

    export_and_compare(Net, [(1, 3, 12, 12)], expect_ops=["Conv"])


def test_local_conv_is_refused_not_converted_as_conv(megengine):
    import megengine.module as M

    from tm2onnx.errors import ConversionError

    with pytest.raises(ConversionError, match="LocalConv2d .* has no ONNX operator"):
        export_and_compare(lambda: M.LocalConv2d(2, 4, 6, 6, 3), [(1, 2, 6, 6)])
