"""MegEngine module definitions for tm2onnx's golden models: the example nets of MegEngine's
graph-surgery guide, and real architectures (ResNet, MobileNetV2, ShuffleNetV2, a transformer
encoder block) written here so that nothing is downloaded. Weights come from `randomize`."""

from __future__ import annotations

import math
import pickle

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.traced_module as tm
import numpy as np

# ---- weights ---------------------------------------------------------------------------------
# A block exposing `residual_bn` (the BN that ends the branch added to its input) gets that BN's
# affine terms scaled down, as trained ResNets have small last-BN gammas (torchvision's
# zero_init_residual takes them to 0). With random weights the sum otherwise doubles in variance
# per block, and ResNet-50 logits reach ~1e3 where fp32 comparisons say little.
RESIDUAL_GAIN = 0.2

def randomize(net: M.Module, rng: np.random.Generator) -> M.Module:
    """Seeded weights for every Conv/Linear/BatchNorm/LayerNorm, then eval mode.

    BatchNorm running statistics and affine terms are random too (default ones are 0/1, which
    would hide a converter that drops eps, swaps mean and var, or folds BN wrongly). Conv and
    Linear weights use He scaling so deep nets keep activations near unit size."""
    for _, module in sorted(net.named_modules(), key=lambda item: item[0]):
        if isinstance(module, M.batchnorm._BatchNorm):
            _set(module, "weight", rng.uniform(0.5, 1.5, module.weight.shape))
            _set(module, "bias", rng.normal(0.0, 0.2, module.bias.shape))
            _set(module, "running_mean", rng.normal(0.0, 0.2, module.running_mean.shape))
            _set(module, "running_var", rng.uniform(0.5, 2.0, module.running_var.shape))
        elif isinstance(module, M.LayerNorm):
            _set(module, "weight", rng.uniform(0.5, 1.5, module.weight.shape))
            _set(module, "bias", rng.normal(0.0, 0.1, module.bias.shape))
        elif isinstance(module, (M.Conv2d, M.Linear)):
            std = math.sqrt(2.0 / _fan_in(module))
            _set(module, "weight", rng.normal(0.0, std, module.weight.shape))
            if module.bias is not None:
                _set(module, "bias", rng.normal(0.0, 0.1, module.bias.shape))
    for module in net.modules():
        branch_end = getattr(module, "residual_bn", None)
        if branch_end is not None:
            _set(branch_end, "weight", branch_end.weight.numpy() * RESIDUAL_GAIN)
            _set(branch_end, "bias", branch_end.bias.numpy() * RESIDUAL_GAIN)
    net.eval()
    return net


def _fan_in(module: M.Module) -> int:
    if isinstance(module, M.Linear):
        return module.in_features
    kernel = module.kernel_size
    return module.in_channels // module.groups * kernel[0] * kernel[1]


def _set(module: M.Module, name: str, array: np.ndarray) -> None:
    current = getattr(module, name)
    value = np.asarray(array, dtype=np.float32).reshape(current.shape)
    cls = mge.Parameter if isinstance(current, mge.Parameter) else mge.Tensor
    setattr(module, name, cls(value))


# ---- the graph-surgery guide's nets ----------------------------------------------------------
class Main(M.Module):
    """Identity: the 'main model' the guide wraps with pre/post-processing."""

    def forward(self, x):
        return x


class PreProcess(M.Module):
    def forward(self, x, y):
        return x * y


class PostProcess(M.Module):
    def forward(self, x, y):
        return x / y


class PrePostNet(M.Module):
    """PreProcess -> an already traced (pickled and reloaded) module -> PostProcess."""

    def __init__(self, traced_module: M.Module):
        super().__init__()
        self.pre_process = PreProcess()
        self.traced_module = traced_module
        self.post_process = PostProcess()

    def forward(self, x, y):
        x = self.pre_process(x, y)
        x = self.traced_module(x)
        return self.post_process(x, y)


def pre_post_net(shape: tuple[int, ...] = (1, 14, 8, 8)) -> PrePostNet:
    """The guide's recipe: trace Main, round-trip it through pickle, wrap it."""
    main = Main()
    main.eval()  # megengine's Module.eval() returns None, so it cannot be chained
    inner = tm.trace_module(main, mge.Tensor(np.zeros(shape, np.float32)))
    return PrePostNet(pickle.loads(pickle.dumps(inner)))


class ConstScaleNet(M.Module):
    """Conv then `* stride / anchor_size`: the constants the guide absorbs into the conv."""

    def __init__(self, stride: int = 8, anchor_size: int = 128):
        super().__init__()
        self.conv = M.Conv2d(3, 16, 1, bias=True)
        self.stride, self.anchor_size = stride, anchor_size

    def forward(self, x):
        x = self.conv(x)
        x = x * self.stride
        return x / self.anchor_size


class BigLinearNet(M.Module):
    """Two Linears; the guide converts those with in*out >= 100*1024 to fp16 (only the second)."""

    def __init__(self, hidden: int = 1024, out: int = 4096):
        super().__init__()
        self.linear_0 = M.Linear(3, hidden, bias=True)
        self.linear_1 = M.Linear(hidden, out, bias=True)

    def forward(self, x):
        return self.linear_1(self.linear_0(x))


class ConvBnConcatNet(M.Module):
    """The guide's dataflow example: concat of a BN output and a Sequential(conv, bn) output."""

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 16, 1, bias=False)
        self.bn = M.BatchNorm2d(16)
        self.conv_bn = M.Sequential(M.Conv2d(16, 16, 1, bias=False), M.BatchNorm2d(16))

    def forward(self, x):
        x0 = self.bn(self.conv(x))
        x1 = self.conv_bn(x0)
        return F.concat((x0, x1), 1)


class ConvBnReluNet(M.Module):
    """The guide's Conv+BN fusion example: conv -> bn -> relu -> Sequential(conv, bn)."""

    def __init__(self):
        super().__init__()
        self.conv = M.Conv2d(3, 16, 1, bias=False)
        self.bn = M.BatchNorm2d(16)
        self.conv_bn = M.Sequential(M.Conv2d(16, 16, 1, bias=False), M.BatchNorm2d(16))

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.conv_bn(x)
