"""QAT / int8 ConvTranspose2d, ConvTransposeRelu2d, ConvTransposeBn2d, ConvTransposeBnRelu2d as
DequantizeLinear(int8 weight) -> ConvTranspose -> Q/DQ. The weight is (in, out/groups, kh, kw)
in ONNX, so a per-channel weight scale is on axis 1."""

from __future__ import annotations

from typing import Any

import megengine.module.qat as QAT
import megengine.module.quantized as Q
import numpy as np

from ..context import ExportContext
from . import module_converter
from ._qdq import check_opset
from ._qmodule import emit_quantized_conv, float_bias, folded_bn

QAT_BN = (QAT.ConvTransposeBn2d, QAT.ConvTransposeBnRelu2d)


def deconv_parts(module: Any) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """(the ConvTranspose2d holding stride/padding, float weight to quantize or None, float
    bias). BN folds onto the output channels: axis 1 of (in, out, kh, kw), axis 2 of the
    grouped (g, in/g, out/g, kh, kw), as MegEngine's fold_weight_bias does."""
    if isinstance(module, QAT_BN):
        conv = module.conv_transpose2d
        shape = (1, -1, 1, 1) if conv.groups == 1 else (conv.groups, 1, -1, 1, 1)
        return conv, *folded_bn(conv, module.bn, shape)
    return module, None, float_bias(module)


@module_converter(QAT.ConvTranspose2d, QAT.ConvTransposeRelu2d, *QAT_BN, Q.ConvTranspose2d,
                  Q.ConvTransposeRelu2d, Q.ConvTransposeBn2d, Q.ConvTransposeBnRelu2d)
def quantized_conv_transpose(ctx: ExportContext, expr: Any, module: Any) -> None:
    """int8 ConvTranspose*Relu / *Bn (bias) modules cannot run in MegEngine 1.13 (its quantized
    conv_transpose2d takes no bias, no groups, no ReLU); they export what their QAT module
    computes, which `quantize` stored them from."""
    check_opset(ctx)
    emit_quantized_conv(ctx, expr, module, *deconv_parts(module), transpose=True)
