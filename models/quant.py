"""Quantized fixtures in MegEngine/Models' quantization style (fused ConvBn modules, Elemwise
adds, QuantStub/DequantStub): the guide's conv-bn net, ResNet-18, MobileNetV2 and ShuffleNetV1,
made QAT with `quantize_qat`, calibrated on seeded data, traced; `int8_version` runs `quantize`."""

from __future__ import annotations

from collections.abc import Callable

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.traced_module as tm
import numpy as np
import onnx
from megengine.quantization import QConfig, ema_fakequant_qconfig, quantize, quantize_qat

from tm2onnx.runtime.steps import StepCount, count_steps

from .nets import randomize


# ---- the guide's conv-bn-concat net, quantization-ready ---------------------------------------
class QuantConvBnConcat(M.Module):
    """conv+bn -> conv+bn+relu, concatenated with the first output (the guide's dataflow net)."""

    def __init__(self):
        super().__init__()
        self.quant, self.dequant = M.QuantStub(), M.DequantStub()
        self.conv_bn = M.ConvBn2d(3, 16, 1, bias=False)
        self.conv_bn_relu = M.ConvBnRelu2d(16, 16, 3, padding=1, bias=False)
        self.concat = M.Concat()

    def forward(self, x):
        x0 = self.conv_bn(self.quant(x))
        return self.dequant(self.concat([x0, self.conv_bn_relu(x0)], 1))


# ---- ResNet-18 (MegEngine/Models quantization recipe) -----------------------------------------
class QuantBasicBlock(M.Module):
    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        self.conv_bn_relu1 = M.ConvBnRelu2d(cin, width, 3, stride, 1, bias=False)
        self.conv_bn2 = M.ConvBn2d(width, width, 3, 1, 1, bias=False)
        self.downsample = (M.ConvBn2d(cin, width, 1, stride, bias=False)
                           if stride != 1 or cin != width else M.Identity())
        self.add_relu = M.Elemwise("FUSE_ADD_RELU")

    @property
    def residual_bn(self) -> M.BatchNorm2d:
        return self.conv_bn2.bn

    def forward(self, x):
        return self.add_relu(self.conv_bn2(self.conv_bn_relu1(x)), self.downsample(x))


class QuantResNet18(M.Module):
    """`float_head`: DequantStub after the average pool, a float (`disable_quantize`) fc, so the
    int8 model's qint8 pool output leaves the quantized part unrounded in onnxruntime."""

    def __init__(self, num_classes: int = 1000, width: int = 64, float_head: bool = False):
        super().__init__()
        self.float_head = float_head
        self.quant, self.dequant = M.QuantStub(), M.DequantStub()
        self.stem = M.ConvBnRelu2d(3, width, 7, 2, 3, bias=False)
        self.maxpool = M.MaxPool2d(3, 2, 1)
        blocks, cin = [], width
        for index, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for i in range(2):
                blocks.append(QuantBasicBlock(cin, cout, 2 if i == 0 and index > 0 else 1))
                cin = cout
        self.layers = M.Sequential(*blocks)
        self.avgpool = M.AdaptiveAvgPool2d((1, 1))
        self.fc = M.Linear(cin, num_classes)
        if float_head:
            self.fc.disable_quantize()

    def forward(self, x):
        x = self.maxpool(self.stem(self.quant(x)))
        x = F.flatten(self.avgpool(self.layers(x)), 1)
        return self.fc(self.dequant(x)) if self.float_head else self.dequant(self.fc(x))


# ---- MobileNetV2 (ReLU instead of ReLU6, as MegEngine/Models' quantized recipe) ----------------
class QuantInvertedResidual(M.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [M.ConvBnRelu2d(cin, hidden, 1, bias=False)] if expand != 1 else []
        layers += [M.ConvBnRelu2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                   M.ConvBn2d(hidden, cout, 1, bias=False)]
        self.body = M.Sequential(*layers)
        self.residual = stride == 1 and cin == cout
        self.add = M.Elemwise("ADD") if self.residual else None

    def forward(self, x):
        return self.add(x, self.body(x)) if self.residual else self.body(x)


class QuantMobileNetV2(M.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 2, 2), (6, 96, 1, 1))

    def __init__(self, num_classes: int = 100):
        super().__init__()
        self.quant, self.dequant = M.QuantStub(), M.DequantStub()
        layers, cin = [M.ConvBnRelu2d(3, 32, 3, 2, 1, bias=False)], 32
        for expand, cout, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                layers.append(QuantInvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(M.ConvBnRelu2d(cin, 320, 1, bias=False))
        self.features = M.Sequential(*layers)
        self.pool = M.AdaptiveAvgPool2d((1, 1))
        self.classifier = M.Linear(320, num_classes)

    def forward(self, x):
        x = F.flatten(self.pool(self.features(self.quant(x))), 1)
        return self.dequant(self.classifier(x))


# ---- ShuffleNetV1 unit (group conv, channel shuffle, concat) -----------------------------------
class QuantShuffleV1Unit(M.Module):
    """ShuffleNetV1's stride-2 unit: grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1,
    concatenated with an average-pooled shortcut (float AvgPool between quantized ops)."""

    def __init__(self, cin: int, cout: int, groups: int = 2):
        super().__init__()
        mid = cout // 4
        self.groups = groups
        self.conv1 = M.ConvBnRelu2d(cin, mid, 1, groups=groups, bias=False)
        self.dwconv = M.ConvBn2d(mid, mid, 3, 2, 1, groups=mid, bias=False)
        self.conv2 = M.ConvBn2d(mid, cout - cin, 1, groups=groups, bias=False)
        self.shortcut = M.AvgPool2d(3, 2, 1)
        self.concat = M.Concat()

    def forward(self, x):
        y = self.conv1(x)
        n, c, h, w = y.shape
        y = y.reshape(n, self.groups, c // self.groups, h, w).transpose(0, 2, 1, 3, 4)
        y = self.conv2(self.dwconv(y.reshape(n, c, h, w)))
        return self.concat([self.shortcut(x), y], 1)


class QuantShuffleNetV1Tiny(M.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.quant, self.dequant = M.QuantStub(), M.DequantStub()
        self.stem = M.ConvBnRelu2d(3, 24, 3, 2, 1, bias=False)
        self.stage = M.Sequential(QuantShuffleV1Unit(24, 96), QuantShuffleV1Unit(96, 192))
        self.pool = M.AdaptiveAvgPool2d((1, 1))
        self.fc = M.Linear(192, num_classes)

    def forward(self, x):
        x = self.stage(self.stem(self.quant(x)))
        return self.dequant(self.fc(F.flatten(self.pool(x), 1)))


# ---- a segmentation head: ConvTranspose upsampling decoder with a skip ------------------------
class QuantSegNetTiny(M.Module):
    """Two stride-2 ConvBnRelu encoder stages and an FCN / U-Net-style decoder: a
    ConvTransposeBnRelu2d (x2) concatenated with the encoder skip, another back to input size,
    then 1x1 per-pixel class scores."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.quant, self.dequant = M.QuantStub(), M.DequantStub()
        self.enc1 = M.ConvBnRelu2d(3, 16, 3, 2, 1, bias=False)
        self.enc2 = M.ConvBnRelu2d(16, 32, 3, 2, 1, bias=False)
        self.up1 = M.ConvTransposeBnRelu2d(32, 16, 4, 2, 1, bias=False)
        self.concat = M.Concat()
        self.up2 = M.ConvTransposeBnRelu2d(32, 16, 4, 2, 1)
        self.classifier = M.Conv2d(16, num_classes, 1)

    def forward(self, x):
        skip = self.enc1(self.quant(x))
        y = self.concat([self.up1(self.enc2(skip)), skip], 1)
        return self.dequant(self.classifier(self.up2(y)))


BUILDERS: dict[str, Callable[[], M.Module]] = {
    "conv_bn_concat": QuantConvBnConcat, "resnet18": QuantResNet18,
    "mobilenet_v2": QuantMobileNetV2, "shufflenet_v1": QuantShuffleNetV1Tiny,
    "seg_decoder": QuantSegNetTiny}


# ---- QAT and int8 ----------------------------------------------------------------------------
def calibrated_qat(net: M.Module, *shapes: tuple[int, ...], qconfig: QConfig =
                   ema_fakequant_qconfig, steps: int = 4, seed: int = 0) -> M.Module:
    """Seeded float weights, `quantize_qat`, a few train-mode passes on seeded data (one array
    per shape; observers record ranges, BN statistics move), then eval mode."""
    mge.config.async_level = 0  # MegEngine's async CPU dispatch was seen computing wrong values
    rng = np.random.default_rng(seed)
    randomize(net, rng)
    randomize_unseeded(net, rng)
    qat = quantize_qat(net, qconfig=qconfig)
    qat.train()
    for _ in range(steps):
        qat(*[mge.Tensor(rng.normal(0.0, 1.0, shape).astype(np.float32)) for shape in shapes])
    qat.eval()
    return qat


def randomize_unseeded(net: M.Module, rng: np.random.Generator) -> None:
    """Seeded weights and non-zero biases for the layers models.nets.randomize leaves to
    MegEngine's own (unseeded) init and zero bias: ConvTranspose2d, BatchMatMulActivation.
    He scaling over the inputs each output sums (in/groups * kh * kw / stride**2)."""
    for _, module in sorted(net.named_modules(), key=lambda item: item[0]):
        if isinstance(module, M.ConvTranspose2d):
            kh, kw = module.kernel_size
            sh, sw = module.stride
            fan_in = max(module.in_channels // module.groups * kh * kw / (sh * sw), 1.0)
        elif isinstance(module, M.BatchMatMulActivation):
            fan_in = module.in_features
        else:
            continue
        module.weight = mge.Parameter(rng.normal(0.0, (2.0 / fan_in) ** 0.5,
                                                 module.weight.shape).astype(np.float32))
        if module.bias is not None:
            module.bias = mge.Parameter(rng.normal(0.0, 0.1, module.bias.shape)
                                        .astype(np.float32))


def traced_qat(name: str, shape: tuple[int, ...], **options) -> tm.TracedModule:
    """The named fixture after quantize_qat and calibration, traced at `shape`."""
    qat = calibrated_qat(BUILDERS[name](), shape, **options)
    traced = tm.trace_module(qat, mge.Tensor(np.zeros(shape, np.float32)))
    traced.eval()
    return traced


def int8_version(traced: tm.TracedModule) -> tm.TracedModule:
    """MegEngine's int8 inference model of a traced QAT module (`quantize`, not in place)."""
    int8 = quantize(traced, inplace=False)
    int8.eval()
    return int8


# ---- measuring equivalence in quantization steps ------------------------------------------------
def output_scale(model: onnx.ModelProto, name: str) -> float:
    """The scale of the activation DequantizeLinear whose grid graph output `name` lies on."""
    from tm2onnx.runtime.steps import activation_grids

    grids = activation_grids(model)
    if name not in grids:
        raise ValueError(f"output {name} is not made by a DequantizeLinear")
    return grids[name]


def steps_apart(reference: np.ndarray, actual: np.ndarray, scale: float) -> StepCount:
    """How far apart two quantized outputs are, in units of the output's scale."""
    apart = count_steps(reference, actual, scale)
    if apart.off_grid > 1e-2:
        raise ValueError(f"outputs are not on a common grid of step {scale}")
    return apart
