"""Seeded fixtures in the style of public MegEngine code of five families the other fixtures miss:
DeepLabV3+ segmentation (ASPP, dilated convs, resize to `x.shape[2:]`), NAFNet restoration
(hand-written channel LayerNorm, SimpleGate, channel attention, pixel shuffle), a Conformer
speech block (`make_pad_mask` from lengths, masked softmax, sinusoidal positions), RAFT-style
flow (all-pairs correlation, coordinate grid, remap lookups) and a DDPM UNet (timestep embedding,
GroupNorm, SiLU, spatial self-attention). Our own code, small sizes; nothing downloaded."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import megengine as mge
import megengine.functional as F
import megengine.module as M
import numpy as np

from models.nets import _set, randomize


def conv_bn_relu(cin: int, cout: int, kernel: int = 3, stride: int = 1,
                 dilation: int = 1) -> M.Sequential:
    pad = dilation * (kernel // 2)
    return M.Sequential(M.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, bias=False),
                        M.BatchNorm2d(cout), M.ReLU())


# ---- segmentation: DeepLabV3+ (MegEngine/Models official/vision/segmentation) ----------------
class ASPP(M.Module):
    """1x1 + three dilated 3x3 branches + image pooling resized back to `x.shape[2:]`."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (1, 2, 3)):
        super().__init__()
        self.conv1 = conv_bn_relu(cin, cout, 1)
        self.dilated = [conv_bn_relu(cin, cout, 3, dilation=r) for r in rates]
        self.conv_gp = conv_bn_relu(cin, cout, 1)
        self.conv_out = conv_bn_relu(cout * (2 + len(rates)), cout, 1)

    def forward(self, x):
        gp = self.conv_gp(F.mean(x, [2, 3], True))
        gp = F.nn.interpolate(gp, x.shape[2:])
        branches = [self.conv1(x), *[conv(x) for conv in self.dilated], gp]
        return self.conv_out(F.concat(branches, axis=1))


class DeepLabV3Plus(M.Module):
    """Stride-4 low-level features, a stride-8 dilated stage, ASPP, decoder, a PSP-style
    2x2 pyramid pooling branch, logits resized to the input's size (bilinear) and the
    inference script's per-pixel class (argmax of the softmax)."""

    def __init__(self, classes: int = 5, width: int = 8):
        super().__init__()
        self.res2 = M.Sequential(conv_bn_relu(3, width, 3, 2), conv_bn_relu(width, width, 3, 2))
        self.res5 = M.Sequential(conv_bn_relu(width, 2 * width, 3, 2),
                                 conv_bn_relu(2 * width, 2 * width, 3, dilation=2))
        self.aspp = ASPP(2 * width, width)
        self.psp = conv_bn_relu(2 * width, width, 1)
        self.upstage1 = conv_bn_relu(width, width // 2, 1)
        self.upstage2 = conv_bn_relu(width * 2 + width // 2, width, 3)
        self.dropout = M.Dropout(0.5)
        self.conv_out = M.Conv2d(width, classes, 1)

    def forward(self, x):
        low = self.res2(x)
        high = self.res5(low)
        up0 = self.dropout(self.aspp(high))
        up0 = F.nn.interpolate(up0, low.shape[2:], mode="bilinear", align_corners=False)
        pooled = self.psp(F.adaptive_avg_pool2d(high, (2, 2)))
        pooled = F.vision.interpolate(pooled, size=low.shape[2:], mode="bilinear",
                                      align_corners=True)
        up2 = self.upstage2(F.concat([up0, pooled, self.upstage1(low)], 1))
        logits = F.vision.interpolate(self.conv_out(up2), x.shape[2:], mode="bilinear")
        return logits, F.argmax(F.softmax(logits, axis=1), axis=1)


# ---- restoration: NAFNet (megvii-research/NAFNet) ---------------------------------------------
class LayerNorm2d(M.Module):
    """NAFNet's LayerNormFunction forward: normalize over channels with mean/var by hand."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = mge.Parameter(np.ones(channels, np.float32))
        self.bias = mge.Parameter(np.zeros(channels, np.float32))

    def forward(self, x):
        _, c, _, _ = x.shape
        mu = x.mean(1, keepdims=True)
        var = ((x - mu) ** 2).mean(1, keepdims=True)
        y = (x - mu) / F.sqrt(var + self.eps)
        return self.weight.reshape(1, c, 1, 1) * y + self.bias.reshape(1, c, 1, 1)


class SimpleGate(M.Module):
    def forward(self, x):
        x1, x2 = F.split(x, 2, axis=1)
        return x1 * x2


class NAFBlock(M.Module):
    def __init__(self, c: int, expand: int = 2):
        super().__init__()
        dw = c * expand
        self.norm1, self.norm2 = LayerNorm2d(c), LayerNorm2d(c)
        self.conv1 = M.Conv2d(c, dw, 1)
        self.conv2 = M.Conv2d(dw, dw, 3, padding=1, groups=dw)
        self.conv3 = M.Conv2d(dw // 2, c, 1)
        self.sca = M.Sequential(M.AdaptiveAvgPool2d(1), M.Conv2d(dw // 2, dw // 2, 1))
        self.sg = SimpleGate()
        self.conv4 = M.Conv2d(c, expand * c, 1)
        self.conv5 = M.Conv2d(expand * c // 2, c, 1)
        # Learned residual scales; NAFNet starts them at 0, trained ones are not.
        self.beta = mge.Parameter(np.zeros((1, c, 1, 1), np.float32))
        self.gamma = mge.Parameter(np.zeros((1, c, 1, 1), np.float32))

    def forward(self, inp):
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + x * self.beta
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + x * self.gamma


class NAFNet(M.Module):
    """intro -> encoder block -> stride-2 down -> middle -> 1x1 + PixelShuffle up -> skip add ->
    decoder block -> ending, plus the input (a residual restoration net)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.intro = M.Conv2d(3, width, 3, padding=1)
        self.enc = NAFBlock(width)
        self.down = M.Conv2d(width, 2 * width, 2, 2)
        self.middle = NAFBlock(2 * width)
        self.up = M.Sequential(M.Conv2d(2 * width, 4 * width, 1, bias=False), M.PixelShuffle(2))
        self.dec = NAFBlock(width)
        self.ending = M.Conv2d(width, 3, 3, padding=1)

    def forward(self, inp):
        skip = self.enc(self.intro(inp))
        x = self.up(self.middle(self.down(skip)))
        x = self.dec(x + skip)
        return self.ending(x) + inp


class PaddedNAFNet(NAFNet):
    """NAFNet's `check_image_size`: pad H and W up to a multiple of the down-sampling factor
    with widths from `x.shape`, run, crop back to the input's size."""

    padder = 2

    def forward(self, inp):
        _, _, h, w = inp.shape
        mod_pad_h = (self.padder - h % self.padder) % self.padder
        mod_pad_w = (self.padder - w % self.padder) % self.padder
        x = F.nn.pad(inp, ((0, 0), (0, 0), (0, mod_pad_h), (0, mod_pad_w)))
        return super().forward(x)[:, :, :h, :w]


# ---- speech: Conformer encoder block (ESPnet/WeNet ported to MegEngine) ---------------------
def make_pad_mask(lengths, max_len: int):
    """True at padded frames, (B, T): the port's `mge.Tensor(F.arange(...))` kept as written."""
    seq = mge.Tensor(F.arange(0, max_len, dtype="int32"))
    return F.expand_dims(seq, 0) >= F.expand_dims(lengths, 1)


def sinusoidal_positions(length: int, dim: int):
    """Transformer positions computed in forward with numpy scalars, as ports write them."""
    pos = F.arange(0, length, dtype="float32").reshape(-1, 1)
    div = F.exp(F.arange(0, dim, 2, dtype="float32") * np.float32(-math.log(10000.0) / dim))
    return F.stack([F.sin(pos * div), F.cos(pos * div)], axis=2).reshape(1, length, dim)


class MaskedSelfAttention(M.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.d_k = heads, dim // heads
        self.linear_q, self.linear_k = M.Linear(dim, dim), M.Linear(dim, dim)
        self.linear_v, self.linear_out = M.Linear(dim, dim), M.Linear(dim, dim)

    def forward(self, x, pad_mask):
        b, t, _ = x.shape
        q, k, v = (lin(x).reshape(b, t, self.heads, self.d_k).transpose(0, 2, 1, 3)
                   for lin in (self.linear_q, self.linear_k, self.linear_v))
        scores = F.matmul(q, k.transpose(0, 1, 3, 2)) / math.sqrt(self.d_k)
        mask = F.broadcast_to(pad_mask.reshape(b, 1, 1, t), scores.shape)
        min_value = float(np.finfo(np.float32).min)
        scores = F.where(mask, F.full_like(scores, min_value), scores)
        attn = F.where(mask, F.zeros_like(scores), F.softmax(scores, axis=-1))
        out = F.matmul(attn, v).transpose(0, 2, 1, 3).reshape(b, t, -1)
        return self.linear_out(out)


class ConvModule(M.Module):
    """Pointwise conv + GLU (split in two), depthwise conv, BatchNorm, Swish, pointwise conv,
    padded frames zeroed before the depthwise conv. The depthwise conv is a (k, 1) Conv2d on
    (B, C, T, 1): MegEngine 1.13's grouped Conv1d makes a 4-d weight its forward refuses."""

    def __init__(self, dim: int, kernel: int = 5):
        super().__init__()
        self.pointwise1 = M.Conv1d(dim, 2 * dim, 1)
        self.depthwise = M.Conv2d(dim, dim, (kernel, 1), padding=(kernel // 2, 0), groups=dim)
        self.norm = M.BatchNorm1d(dim)
        self.pointwise2 = M.Conv1d(dim, dim, 1)

    def forward(self, x, pad_mask):
        x = self.pointwise1(x.transpose(0, 2, 1))
        a, gate = F.split(x, 2, axis=1)
        x = a * F.sigmoid(gate)
        x = F.where(F.expand_dims(pad_mask, 1), F.zeros_like(x), x)
        x = self.norm(F.squeeze(self.depthwise(F.expand_dims(x, -1)), -1))
        return self.pointwise2(x * F.sigmoid(x)).transpose(0, 2, 1)


class FeedForward(M.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = M.LayerNorm(dim)
        self.w1, self.w2 = M.Linear(dim, 2 * dim), M.Linear(2 * dim, dim)

    def forward(self, x):
        return self.w2(F.silu(self.w1(self.norm(x))))


class ConformerBlock(M.Module):
    """Input (B, T, D) features and (B,) int32 lengths; x * sqrt(D) + positions, macaron FFN,
    masked MHSA, conv module, FFN, final LayerNorm, padded frames zeroed; returns a dict of
    features and the pad mask, as ESPnet encoders do."""

    def __init__(self, dim: int = 8, heads: int = 2):
        super().__init__()
        self.xscale = np.float32(math.sqrt(dim))
        self.dt = np.float32  # ports keep the compute dtype as a class attribute
        self.ff1, self.ff2 = FeedForward(dim), FeedForward(dim)
        self.norm_mha, self.norm_conv = M.LayerNorm(dim), M.LayerNorm(dim)
        self.mha = MaskedSelfAttention(dim, heads)
        self.conv = ConvModule(dim)
        self.norm_final = M.LayerNorm(dim)

    def forward(self, feats, lengths):
        _, t, d = feats.shape
        pad_mask = make_pad_mask(lengths, t)
        x = feats * self.xscale + sinusoidal_positions(t, d)
        x = x + 0.5 * self.ff1(x)
        x = x + self.mha(self.norm_mha(x), pad_mask)
        x = x + self.conv(self.norm_conv(x), pad_mask)
        x = self.norm_final(x + 0.5 * self.ff2(x))
        x = F.where(F.expand_dims(pad_mask, 2), F.zeros(x.shape, dtype=self.dt), x)
        return {"encoder_out": x, "encoder_mask": pad_mask}


# ---- optical flow: RAFT (all-pairs correlation, iterative lookups) ----------------------------
def coords_grid(feature):
    """(B, 2, H, W) pixel coordinates (x, y) of `feature`'s grid, in its dtype."""
    b, _, h, w = feature.shape
    ys, xs = F.meshgrid(F.arange(h, dtype="int32"), F.arange(w, dtype="int32"), indexing="ij")
    coords = F.broadcast_to(F.expand_dims(F.stack([xs, ys], axis=0), 0), (b, 2, h, w))
    # astype after the broadcast: it copies, and MegEngine 1.13 computes elementwise ops on
    # a broadcast_to result wrongly past batch 0 (g - g is not 0 there)
    return coords.astype(feature.dtype)


class RAFTLike(M.Module):
    """Shared stride-4 encoder on both frames, all-pairs correlation by matmul, `iters`
    updates that look up a (2r+1)^2 window of the correlation volume around the current
    coordinates with F.vision.remap and warp frame-2 features, flow upsampled x4."""

    def __init__(self, width: int = 8, radius: int = 1, iters: int = 2):
        super().__init__()
        self.radius, self.iters = radius, iters
        self.fnet = M.Sequential(conv_bn_relu(3, width, 3, 2), conv_bn_relu(width, width, 3, 2))
        self.cnet = M.Sequential(conv_bn_relu(3, width, 3, 2), conv_bn_relu(width, width, 3, 2))
        window = (2 * radius + 1) ** 2
        self.update = M.Sequential(conv_bn_relu(window + 2 * width + 2, width, 3),
                                   M.Conv2d(width, 2, 3, padding=1))

    def lookup(self, corr, coords):
        b, _, h, w = coords.shape
        r = self.radius
        d = F.arange(-r, r + 1, dtype="float32")
        dy, dx = F.meshgrid(d, d, indexing="ij")
        delta = F.stack([dx, dy], axis=-1).reshape(1, 2 * r + 1, 2 * r + 1, 2)
        centroid = coords.transpose(0, 2, 3, 1).reshape(b * h * w, 1, 1, 2)
        window = F.vision.remap(corr, centroid + delta, border_mode="constant")
        return window.reshape(b, h, w, -1).transpose(0, 3, 1, 2)

    def forward(self, image1, image2):
        fmap1, fmap2 = self.fnet(image1), self.fnet(image2)
        b, c, h, w = fmap1.shape
        corr = F.matmul(fmap1.reshape(b, c, h * w).transpose(0, 2, 1), fmap2.reshape(b, c, -1))
        corr = (corr / F.sqrt(mge.Tensor(float(c)))).reshape(b * h * w, 1, h, w)
        context = self.cnet(image1)
        coords0 = coords_grid(fmap1)
        coords1 = coords0
        for _ in range(self.iters):
            flow = coords1 - coords0
            warped = F.vision.remap(fmap2, coords1.transpose(0, 2, 3, 1), border_mode="replicate")
            features = F.concat([self.lookup(corr, coords1), context, warped, flow], axis=1)
            coords1 = coords1 + self.update(features)
        flow = coords1 - coords0
        return 4 * F.vision.interpolate(flow, scale_factor=4, mode="bilinear",
                                        align_corners=True)


# ---- diffusion: DDPM UNet (MegEngine/Models taming_transformer diffusion_modules) -------------
def timestep_embedding(t, dim: int):
    half = dim // 2
    freqs = F.exp(-math.log(10000) * F.arange(half, dtype="float32") / half)
    args = t.astype(np.float32).reshape(-1, 1) * freqs.reshape(1, -1)
    return F.concat([F.cos(args), F.sin(args)], axis=1)


class ResBlock(M.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int = 4):
        super().__init__()
        self.block1 = M.Sequential(M.GroupNorm(groups, cin), M.SiLU(),
                                   M.Conv2d(cin, cout, 3, padding=1))
        self.temb_proj = M.Sequential(M.SiLU(), M.Linear(temb, cout))
        self.block2 = M.Sequential(M.GroupNorm(groups, cout), M.SiLU(),
                                   M.Conv2d(cout, cout, 3, padding=1))
        self.short_cut = M.Conv2d(cin, cout, 1) if cin != cout else M.Identity()

    def forward(self, x, temb):
        h = self.block1(x)
        h += self.temb_proj(temb)[:, :, None, None]
        h = self.block2(h)
        return h + self.short_cut(x)


class AttnBlock(M.Module):
    def __init__(self, ch: int, groups: int = 4):
        super().__init__()
        self.group_norm = M.GroupNorm(groups, ch)
        self.proj_q, self.proj_k = M.Conv2d(ch, ch, 1), M.Conv2d(ch, ch, 1)
        self.proj_v, self.proj = M.Conv2d(ch, ch, 1), M.Conv2d(ch, ch, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.group_norm(x)
        q = self.proj_q(h).reshape(B, C, H * W)
        k = self.proj_k(h).reshape(B, C, H * W)
        v = self.proj_v(h).reshape(B, C, H * W)
        w = F.softmax((q.transpose(0, 2, 1) @ k) * (int(C) ** (-0.5)), axis=-1)
        h = (v @ w.transpose(0, 2, 1)).reshape(B, C, H, W)
        return x + self.proj(h)


class DownSample(M.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.main = M.Conv2d(ch, ch, 3, stride=2)

    def forward(self, x):
        return self.main(F.nn.pad(x, [*[(0, 0) for _ in range(x.ndim - 2)], (0, 1), (0, 1)]))


class UpSample(M.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.main = M.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.main(F.nn.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(M.Module):
    """Inputs x (B, 3, H, W) and integer timesteps t (B,): head, ResBlock, down, ResBlock +
    attention (middle), up, ResBlock on the skip concat, GroupNorm/SiLU/conv tail."""

    def __init__(self, ch: int = 8):
        super().__init__()
        self.ch = ch
        self.time_embedding = M.Sequential(M.Linear(ch, 4 * ch), M.SiLU(),
                                           M.Linear(4 * ch, 4 * ch))
        self.head = M.Conv2d(3, ch, 3, padding=1)
        self.res1 = ResBlock(ch, ch, 4 * ch)
        self.down = DownSample(ch)
        self.mid = ResBlock(ch, 2 * ch, 4 * ch)
        self.attn = AttnBlock(2 * ch)
        self.up = UpSample(2 * ch)
        self.res2 = ResBlock(3 * ch, ch, 4 * ch)
        self.tail = M.Sequential(M.GroupNorm(4, ch), M.SiLU(), M.Conv2d(ch, 3, 3, padding=1))

    def forward(self, x, t):
        temb = self.time_embedding(timestep_embedding(t, self.ch))
        h = self.res1(self.head(x), temb)
        skip = h
        h = self.attn(self.mid(self.down(h), temb))
        h = self.res2(F.concat([self.up(h), skip], axis=1), temb)
        return self.tail(h)


# name -> (factory, {input: shape or array maker}); all inputs seeded in `inputs`
def _lengths(rng: np.random.Generator) -> np.ndarray:
    return np.array([12, 7], np.int32)


def _timesteps(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 1000, (2,)).astype(np.int32)


MODELS: dict[str, tuple[Callable[[], M.Module], tuple]] = {
    "deeplabv3plus": (DeepLabV3Plus, ((1, 3, 32, 32),)),
    "nafnet": (NAFNet, ((1, 3, 32, 32),)),
    "nafnet_padded": (PaddedNAFNet, ((1, 3, 30, 31),)),
    "conformer": (ConformerBlock, ((2, 12, 8), _lengths)),
    "raft": (RAFTLike, ((1, 3, 32, 32), (1, 3, 32, 32))),
    "ddpm_unet": (UNet, ((2, 3, 16, 16), _timesteps)),
}


def inputs(name: str, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [spec(rng) if callable(spec) else rng.uniform(-1, 1, spec).astype(np.float32)
            for spec in MODELS[name][1]]


def _randomize_scales(net: M.Module, rng: np.random.Generator) -> None:
    """Seeded values for parameters `randomize` leaves at their init: NAFNet's LayerNorm2d and
    its beta/gamma residual scales (0 at init: the block would be an identity), GroupNorm."""
    for _, module in sorted(net.named_modules(), key=lambda item: item[0]):
        if isinstance(module, (LayerNorm2d, M.GroupNorm)):
            _set(module, "weight", rng.uniform(0.5, 1.5, module.weight.shape))
            _set(module, "bias", rng.normal(0.0, 0.2, module.bias.shape))
        elif isinstance(module, NAFBlock):
            _set(module, "beta", rng.uniform(0.2, 1.0, module.beta.shape))
            _set(module, "gamma", rng.uniform(0.2, 1.0, module.gamma.shape))


def build(name: str, seed: int = 0) -> tuple[Any, list[np.ndarray]]:
    """(module with seeded weights in eval mode, input arrays) for one model."""
    rng = np.random.default_rng(seed)
    net = randomize(MODELS[name][0](), rng)
    _randomize_scales(net, rng)
    net.eval()
    return net, inputs(name, seed)
