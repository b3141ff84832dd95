"""Seeded MegEngine models for issue 14's shape patterns: DeFCN-style 3-D max filtering (one
filter module over stacks of 2 or 3 FPN levels, looping over the stacked axis), a ViT attention
block that moves q/k/v to the front and splits them off, and a net returning a submodule output
whose generated name clashes with an inner tensor."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import megengine.functional as F
import megengine.module as M
import numpy as np

from models.nets import randomize


class MaxFilter3d(M.Module):
    """A 3x3x3 max filter (stride 1, padding 1) over [N, C, D, H, W]: MegEngine has no
    max_pool3d, so a 2-D max pool per plane and a Python loop over `x.shape[2]` for depth."""

    def forward(self, x):
        n, c, d, h, w = x.shape
        planes = F.max_pool2d(x.reshape(n, c * d, h, w), 3, 1, 1).reshape(n, c, d, h, w)
        return F.stack([F.max(planes[:, :, max(i - 1, 0):i + 2], axis=2)
                        for i in range(x.shape[2])], axis=2)


class MaxFiltering(M.Module):
    """DeFCN's (POTO) 3-D max filtering: each level stacked with its resized neighbours (2 at
    the ends of the pyramid, 3 between) through one filter module, its own plane kept."""

    def __init__(self, channels: int = 8, order: tuple[int, ...] = (0, 1, 2)):
        super().__init__()
        self.levels, self.order = len(order), order
        self.conv = M.Conv2d(channels, channels, 3, 1, 1)
        self.filt = MaxFilter3d()
        self.norm = M.GroupNorm(2, channels)

    def forward(self, *feats):
        convs = [self.conv(x) for x in feats]
        outs = {}
        for level in self.order:  # the filter's graph is recorded at the first level's depth
            size = convs[level].shape[2:]
            around = range(max(0, level - 1), min(self.levels, level + 2))
            stack = F.stack([convs[k] if k == level else
                             F.vision.interpolate(convs[k], size=size, mode="bilinear")
                             for k in around], axis=2)
            kept = self.filt(stack)[:, :, min(level, 1)]
            outs[level] = F.relu(self.norm(kept + feats[level]))
        return tuple(outs[level] for level in range(self.levels))


class SplitAttention(M.Module):
    """timm's ViT attention: qkv moved to the front by reshape + transpose(2, 0, 3, 1, 4),
    then `F.split` into 3 along axis 0 (the batch is axis 1 by then)."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = M.Linear(dim, dim * 3)
        self.proj = M.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).transpose(2, 0, 3, 1, 4)
        q, k, v = (part[0] for part in F.split(qkv, 3, axis=0))
        attn = F.softmax(F.matmul(q, k.transpose(0, 1, 3, 2)) * self.scale, axis=-1)
        return self.proj(F.matmul(attn, v).transpose(0, 2, 1, 3).reshape(b, n, c))


class Stem(M.Module):
    """A block whose last layer is called `out`: flattened, its output is `conv_out_out`."""

    def __init__(self):
        super().__init__()
        self.out = M.Conv2d(3, 4, 3, 1, 1)

    def forward(self, x):
        return F.relu(self.out(x))


class NameClash(M.Module):
    """A submodule `conv` with a child `out`, then a submodule `conv_out` whose output the net
    returns: both are `conv_out_out` (`<module>_out` inside `conv_`)."""

    def __init__(self):
        super().__init__()
        self.conv = Stem()
        self.conv_out = M.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.conv_out(self.conv(x)), x.mean(axis=1)


# name -> (factory, input shapes)
PATTERNS: dict[str, tuple[Callable[[], Any], tuple]] = {
    "max_filtering": (MaxFiltering, ((1, 8, 16, 16), (1, 8, 8, 8), (1, 8, 4, 4))),
    "max_filtering_middle_first": (lambda: MaxFiltering(order=(1, 0, 2)),
                               ((1, 8, 16, 16), (1, 8, 8, 8), (1, 8, 4, 4))),
    "split_attention": (SplitAttention, ((2, 10, 32),)),
    "name_clash": (NameClash, ((1, 3, 8, 8),)),
}


def inputs(name: str, seed: int = 0, batch: int | None = None) -> list[np.ndarray]:
    """Uniform(-1, 1) inputs; `batch` replaces the traced batch size."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, (batch or shape[0], *shape[1:])).astype(np.float32)
            for shape in PATTERNS[name][1]]


def build(name: str, seed: int = 0) -> tuple[Any, list[np.ndarray]]:
    """(TracedModule, input arrays) for a pattern, weights seeded, in eval mode."""
    import megengine as mge
    import megengine.traced_module as tm

    net = randomize(PATTERNS[name][0](), np.random.default_rng(seed))
    net.eval()
    arrays = inputs(name, seed)
    return tm.trace_module(net, *[mge.Tensor(a) for a in arrays]), arrays
