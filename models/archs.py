"""Real architectures written in MegEngine with torchvision's layouts (no downloads): ResNet-18/50,
MobileNetV2 (ReLU6, depthwise convs), ShuffleNetV2 (channel shuffle, split/concat) and a
pre-LN transformer encoder block. Weights come from `nets.randomize`."""

from __future__ import annotations

import math

import megengine.functional as F
import megengine.module as M


# ---- ResNet (torchvision layout) -------------------------------------------------------------
def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> M.Sequential:
    return M.Sequential(M.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups,
                                 bias=False), M.BatchNorm2d(cout))


class BasicBlock(M.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.conv2 = conv_bn(cin, width, 3, stride), conv_bn(width, cout, 3)
        self.downsample = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    @property
    def residual_bn(self) -> M.BatchNorm2d:
        return self.conv2[1]

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv2(F.relu(self.conv1(x))) + identity)


class Bottleneck(M.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = conv_bn(cin, width, 1)
        self.conv2 = conv_bn(width, width, 3, stride)
        self.conv3 = conv_bn(width, cout, 1)
        self.downsample = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    @property
    def residual_bn(self) -> M.BatchNorm2d:
        return self.conv3[1]

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.conv2(F.relu(self.conv1(x))))
        return F.relu(self.conv3(out) + identity)


class ResNet(M.Module):
    def __init__(self, block: type, layers: tuple[int, ...], num_classes: int = 1000):
        super().__init__()
        self.conv1 = M.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = M.BatchNorm2d(64)
        self.maxpool = M.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for index, (width, count) in enumerate(zip((64, 128, 256, 512), layers)):
            blocks = []
            for i in range(count):
                blocks.append(block(cin, width, 2 if i == 0 and index > 0 else 1))
                cin = width * block.expansion
            stages.append(M.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = M.AdaptiveAvgPool2d((1, 1))
        self.fc = M.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.flatten(self.avgpool(x), 1))


def resnet18() -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2))


def resnet50() -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3))


# ---- MobileNetV2 -----------------------------------------------------------------------------
def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBnReLU6(M.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.body = conv_bn(cin, cout, kernel, stride, groups)

    def forward(self, x):
        return F.relu6(self.body(x))


class InvertedResidual(M.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear projection, residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [ConvBnReLU6(cin, hidden, 1)] if expand != 1 else []
        layers += [ConvBnReLU6(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1)]
        self.body = M.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class MobileNetV2(M.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))  # expand t, channels c, repeats n, stride s

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000):
        super().__init__()
        cin = _divisible(32 * width_mult)
        self.last_channels = _divisible(1280 * max(1.0, width_mult))
        layers = [ConvBnReLU6(3, cin, 3, 2)]
        for expand, channels, repeats, stride in self.SETTINGS:
            cout = _divisible(channels * width_mult)
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        layers.append(ConvBnReLU6(cin, self.last_channels, 1))
        self.features = M.Sequential(*layers)
        self.classifier = M.Linear(self.last_channels, num_classes)

    def forward(self, x):
        x = F.mean(self.features(x), axis=[2, 3])
        return self.classifier(x)


# ---- ShuffleNetV2 ----------------------------------------------------------------------------
def channel_shuffle(x, groups: int = 2):
    """reshape (n, g, c/g, h, w) -> swap the group axes -> reshape back, as in the paper."""
    n, c, h, w = x.shape
    x = x.reshape(n, groups, c // groups, h, w)
    return x.transpose(0, 2, 1, 3, 4).reshape(n, c, h, w)


class ShuffleUnit(M.Module):
    """Stride 1: split channels in half, transform one half. Stride 2: transform both copies."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        half = cout // 2
        branch_in = cin if stride == 2 else half
        self.branch2 = M.Sequential(
            conv_bn(branch_in, half, 1), M.ReLU(),
            conv_bn(half, half, 3, stride, groups=half),
            conv_bn(half, half, 1), M.ReLU())
        if stride == 2:
            self.branch1 = M.Sequential(conv_bn(cin, cin, 3, 2, groups=cin),
                                        conv_bn(cin, half, 1), M.ReLU())

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = F.split(x, 2, axis=1)
            out = F.concat([x1, self.branch2(x2)], axis=1)
        else:
            out = F.concat([self.branch1(x), self.branch2(x)], axis=1)
        return channel_shuffle(out, 2)


SHUFFLENET_CHANNELS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024)}


class ShuffleNetV2(M.Module):

    def __init__(self, width: float = 1.0, repeats: tuple[int, ...] = (4, 8, 4),
                 num_classes: int = 1000):
        super().__init__()
        channels = SHUFFLENET_CHANNELS[width]
        self.conv1 = M.Sequential(conv_bn(3, channels[0], 3, 2), M.ReLU())
        self.maxpool = M.MaxPool2d(3, 2, 1)
        cin, stages = channels[0], []
        for cout, count in zip(channels[1:4], repeats):
            units = [ShuffleUnit(cin, cout, 2)]
            units += [ShuffleUnit(cout, cout, 1) for _ in range(count - 1)]
            stages.append(M.Sequential(*units))
            cin = cout
        self.stage2, self.stage3, self.stage4 = stages
        self.conv5 = M.Sequential(conv_bn(cin, channels[4], 1), M.ReLU())
        self.fc = M.Linear(channels[4], num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(F.mean(x, axis=[2, 3]))


# ---- transformer encoder block ---------------------------------------------------------------
class MultiHeadAttention(M.Module):
    """Scaled dot-product attention spelled out with F.matmul and F.softmax."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = M.Linear(dim, dim), M.Linear(dim, dim), M.Linear(dim, dim)
        self.proj = M.Linear(dim, dim)

    def _split_heads(self, x):
        n, t, _ = x.shape
        return x.reshape(n, t, self.heads, self.head_dim).transpose(0, 2, 1, 3)

    def forward(self, x):
        n, t, c = x.shape
        q, k, v = (self._split_heads(layer(x)) for layer in (self.q, self.k, self.v))
        scores = F.matmul(q, k, transpose_b=True) * (1.0 / math.sqrt(self.head_dim))
        attn = F.softmax(scores, axis=-1)
        out = F.matmul(attn, v).transpose(0, 2, 1, 3).reshape(n, t, c)
        return self.proj(out)


class TransformerBlock(M.Module):
    """Pre-LN encoder block: x + MHA(LN(x)), then x + MLP(LN(x)) with a GELU MLP."""

    def __init__(self, dim: int = 64, heads: int = 4, mlp_ratio: int = 4):
        super().__init__()
        self.ln1, self.ln2 = M.LayerNorm(dim), M.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.fc1, self.fc2 = M.Linear(dim, dim * mlp_ratio), M.Linear(dim * mlp_ratio, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
