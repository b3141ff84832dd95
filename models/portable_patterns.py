"""Small seeded MegEngine models with the patterns that once broke TFLite and ncnn before the
portable default export (docs/targets.md): float32 x int32 arithmetic (numpy would promote it to
float64), HRNet-style nearest 2x upsampling by F.repeat (a rank-5 Tile), and YOLOX-style
slice writes `out[..., :2] = v` (a ScatterND). bench/toolchains.py runs them on every
toolchain; the channel shuffle and the integer Clip in QDQ are ShuffleNetV2 and QAT ResNet-18."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import megengine.functional as F
import megengine.module as M
import numpy as np

from models.nets import randomize


class IntPromotion(M.Module):
    """YOLOX's decode: float32 outputs times int32 grids and strides (MegEngine: float32)."""

    def __init__(self, cells: int = 20):
        super().__init__()
        self.head = M.Conv2d(4, 6, 1)
        self.grids = np.stack(np.meshgrid(np.arange(4), np.arange(cells // 4)), -1
                              ).reshape(1, cells, 2).astype(np.int32)
        self.strides = np.full((1, cells, 1), 8, dtype=np.int32)

    def forward(self, x):
        out = F.flatten(self.head(x), 2).transpose(0, 2, 1)
        xy = (out[..., :2] + self.grids) * self.strides
        wh = F.exp(out[..., 2:4]) * self.strides
        return F.concat([xy, wh, out[..., 4:]], axis=-1)


class RepeatUpsample(M.Module):
    """HRNet's nearest 2x upsampling written as F.repeat on H then W, between convolutions."""

    def __init__(self):
        super().__init__()
        self.down = M.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fuse = M.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        small = F.relu(self.down(x))
        return self.fuse(F.repeat(F.repeat(small, 2, 2), 2, 3))


class SliceWrite(M.Module):
    """YOLOX's in-place decode on a conv head: writes into static slices of the last axis."""

    def __init__(self):
        super().__init__()
        self.head = M.Conv2d(4, 7, 1)

    def forward(self, x):
        out = F.flatten(self.head(x), 2).transpose(0, 2, 1) + 0
        out[..., :2] = F.sigmoid(out[..., :2]) * 8
        out[..., 4:] = F.sigmoid(out[..., 4:])
        return out


PATTERNS: dict[str, tuple[Callable[[], Any], tuple[int, ...]]] = {
    "int_promotion": (IntPromotion, (1, 4, 5, 4)),
    "repeat_upsample": (RepeatUpsample, (1, 3, 16, 16)),
    "slice_write": (SliceWrite, (1, 4, 6, 6)),
}


def build(name: str, seed: int = 0) -> tuple[Any, list[np.ndarray]]:
    """(TracedModule, input arrays) for a pattern, weights seeded, in eval mode."""
    import megengine as mge
    import megengine.traced_module as tm

    factory, shape = PATTERNS[name]
    net = randomize(factory(), np.random.default_rng(seed))
    net.eval()
    x = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    return tm.trace_module(net, mge.Tensor(x)), [x]
