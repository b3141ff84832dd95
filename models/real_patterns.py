"""Small seeded MegEngine models reproducing patterns of real detectors and ports that exporters
get wrong: a RetinaNet/FCOS-style head shared over five FPN levels, YOLOX's PAFPN with one
upsample module for two levels, a box rescale by a concat of 0-d scales, and by-name imports."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import megengine.functional as F
import megengine.module as M
import numpy as np

from models import named_ops
from models.nets import randomize


class Upsample(M.Module):
    """YOLOX's MegEngine `UpSample`: one module object, called on every level it serves."""

    def __init__(self, scale_factor: int = 2, mode: str = "nearest"):
        super().__init__()
        self.scale_factor, self.mode = scale_factor, mode

    def forward(self, x):
        return F.vision.interpolate(x, scale_factor=self.scale_factor, mode=self.mode)


class SharedUpsample(M.Module):
    """The smallest case: the same interpolate wrapper on a 4x4 and an 8x8 input."""

    def __init__(self):
        super().__init__()
        self.up = Upsample(2, "bilinear")

    def forward(self, small, large):
        return self.up(small), self.up(large)


def conv_act(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> M.Sequential:
    return M.Sequential(M.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
                        M.BatchNorm2d(cout), M.SiLU())


class SharedHead(M.Module):
    """RetinaNet's head: cls/bbox subnets and predictors, reshaped per level from `x.shape`
    (permute_to_N_HWA_K), so both the convs and the shape arithmetic see each level's size."""

    def __init__(self, channels: int, anchors: int, classes: int):
        super().__init__()
        self.classes = classes
        self.cls_subnet = M.Sequential(*[m for _ in range(2) for m in
                                         (M.Conv2d(channels, channels, 3, 1, 1), M.ReLU())])
        self.bbox_subnet = M.Sequential(*[m for _ in range(2) for m in
                                          (M.Conv2d(channels, channels, 3, 1, 1), M.ReLU())])
        self.cls_score = M.Conv2d(channels, anchors * classes, 3, 1, 1)
        self.bbox_pred = M.Conv2d(channels, anchors * 4, 3, 1, 1)

    def forward(self, x):
        n, _, h, w = x.shape
        logits = self.cls_score(self.cls_subnet(x))
        deltas = self.bbox_pred(self.bbox_subnet(x))
        logits = logits.reshape(n, -1, self.classes, h, w).transpose(0, 3, 4, 1, 2)
        deltas = deltas.reshape(n, -1, 4, h, w).transpose(0, 3, 4, 1, 2)
        return logits.reshape(n, -1, self.classes), deltas.reshape(n, -1, 4)


class SharedHeadFPN(M.Module):
    """Five pyramid levels (stride 1..16 of a 32x32 input) through one SharedHead."""

    def __init__(self, channels: int = 8, levels: int = 5, anchors: int = 3, classes: int = 4):
        super().__init__()
        self.stem = conv_act(3, channels)
        self.downs = [conv_act(channels, channels, 3, 2) for _ in range(levels - 1)]
        self.head = SharedHead(channels, anchors, classes)

    def forward(self, x):
        features = [self.stem(x)]
        for down in self.downs:
            features.append(down(features[-1]))
        outputs = [self.head(f) for f in features]
        return (F.concat([o[0] for o in outputs], axis=1),
                F.concat([o[1] for o in outputs], axis=1))


class PAFPN(M.Module):
    """YOLOX's top-down path: one `self.upsample` for the dark5->dark4 and dark4->dark3 steps."""

    def __init__(self, width: int = 4):
        super().__init__()
        c3, c4, c5 = width * 2, width * 4, width * 8
        self.stem = conv_act(3, c3, 3, 2)
        self.dark4 = conv_act(c3, c4, 3, 2)
        self.dark5 = conv_act(c4, c5, 3, 2)
        self.upsample = Upsample(2, "nearest")
        self.lateral_conv0 = conv_act(c5, c4, 1)
        self.c3_p4 = conv_act(2 * c4, c4)
        self.reduce_conv1 = conv_act(c4, c3, 1)
        self.c3_p3 = conv_act(2 * c3, c3)

    def forward(self, x):
        x2 = self.stem(x)
        x1 = self.dark4(x2)
        x0 = self.dark5(x1)
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.c3_p4(F.concat([self.upsample(fpn_out0), x1], 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.c3_p3(F.concat([self.upsample(fpn_out1), x2], 1))
        return pan_out2, f_out0


class BoxRescale(M.Module):
    """Detectors' `boxes / F.concat([scale_w, scale_h, scale_w, scale_h])` with 0-d scales
    read from im_info (resized h, w, original h, w)."""

    def forward(self, boxes, im_info):
        scale_w = im_info[0, 1] / im_info[0, 3]
        scale_h = im_info[0, 0] / im_info[0, 2]
        return boxes / F.concat([scale_w, scale_h, scale_w, scale_h])


class NamedImports(M.Module):
    """The CLIP-port pattern: a transformer block whose helper module imported `linear`,
    `matmul`, `softmax`, `split` by name (traced as raw apply exprs)."""

    def __init__(self, channels: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.norm = M.LayerNorm(channels)
        self.qkv = M.Linear(channels, 3 * channels)
        self.proj = M.Linear(channels, channels, bias=False)

    def forward(self, x):
        y = named_ops.attention(self.norm(x), self.qkv.weight, self.qkv.bias, self.proj.weight,
                                self.heads)
        return x + y


# name -> (factory, input shapes or arrays); inputs made by `inputs(name)`
PATTERNS: dict[str, tuple[Callable[[], Any], tuple]] = {
    "shared_upsample": (SharedUpsample, ((1, 2, 4, 4), (1, 2, 8, 8))),
    "shared_head_fpn": (SharedHeadFPN, ((2, 3, 32, 32),)),
    "pafpn": (PAFPN, ((2, 3, 32, 32),)),
    "box_rescale": (BoxRescale, ((5, 4), "im_info")),
    "named_imports": (NamedImports, ((2, 5, 8),)),
}


def inputs(name: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for shape in PATTERNS[name][1]:
        if shape == "im_info":
            arrays.append(np.array([[600, 800, 480, 640]], np.float32))
        else:
            arrays.append(rng.uniform(-1, 1, shape).astype(np.float32))
    return arrays


def build(name: str, seed: int = 0) -> tuple[Any, list[np.ndarray]]:
    """(TracedModule, input arrays) for a pattern, weights seeded, in eval mode."""
    import megengine as mge
    import megengine.traced_module as tm

    net = randomize(PATTERNS[name][0](), np.random.default_rng(seed))
    net.eval()
    arrays = inputs(name, seed)
    return tm.trace_module(net, *[mge.Tensor(a) for a in arrays]), arrays
