"""Seeded builders of detector and vision patterns whose ops have data-dependent or shifted
layouts: a Swin shifted-window block (roll + window partition), RetinaNet-style decode + NMS
post-processing, and a two-stage RPN + RoIAlign head. Written here, nothing downloaded."""

from __future__ import annotations

import math

import megengine as mge
import megengine.functional as F
import megengine.module as M
import numpy as np

from models.nets import randomize


# ---- Swin: cyclic shift, window partition, masked window attention, reverse ------------------
def window_partition(x, window: int):
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window, window, width // window, window, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(windows, window: int, height: int, width: int):
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, channels)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """-100 between tokens of one window that came from different image regions after the
    shift (Swin's attention mask), as a (windows, window², window²) float32 array."""
    regions = np.zeros((height, width), np.float32)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for label, (rows, cols) in enumerate((r, c) for r in cuts for c in cuts):
        regions[rows, cols] = label
    parts = regions.reshape(height // window, window, width // window, window)
    parts = parts.transpose(0, 2, 1, 3).reshape(-1, window * window)
    return np.where(parts[:, None, :] != parts[:, :, None], -100.0, 0.0).astype(np.float32)


class SwinShiftBlock(M.Module):
    def __init__(self, channels: int = 8, size: int = 8, window: int = 4, heads: int = 2):
        super().__init__()
        self.window, self.shift, self.heads, self.size = window, window // 2, heads, size
        self.norm = M.LayerNorm(channels)
        self.qkv = M.Linear(channels, channels * 3)
        self.proj = M.Linear(channels, channels)
        self.mask = F.expand_dims(
            mge.Tensor(shifted_window_mask(size, size, window, window // 2)), 1)

    def forward(self, x):  # (B, H, W, C)
        shifted = F.roll(self.norm(x), (-self.shift, -self.shift), (1, 2))
        windows = window_partition(shifted, self.window)
        count, tokens, channels = windows.shape
        qkv = self.qkv(windows).reshape(count, tokens, 3, self.heads, -1).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = F.matmul(q, k.transpose(0, 1, 3, 2)) / math.sqrt(channels // self.heads)
        windows_per_image = self.mask.shape[0]
        scores = scores.reshape(-1, windows_per_image, self.heads, tokens, tokens) + self.mask
        attn = F.softmax(scores.reshape(-1, self.heads, tokens, tokens), axis=-1)
        out = F.matmul(attn, v).transpose(0, 2, 1, 3).reshape(count, tokens, channels)
        out = window_reverse(self.proj(out), self.window, self.size, self.size)
        return x + F.roll(out, (self.shift, self.shift), (1, 2))


# ---- RetinaNet-style single-stage post-processing -------------------------------------------
def grid_anchors(feature, stride: int, sizes: tuple[float, ...]):
    """(H*W*A, 4) anchors centred on each cell of `feature` (N, C, H, W): shape-dependent
    F.arange code, folded at export for static shapes."""
    height, width = feature.shape[2], feature.shape[3]
    ys = (F.arange(0, height, dtype="float32") + 0.5) * stride
    xs = (F.arange(0, width, dtype="float32") + 0.5) * stride
    cy = F.broadcast_to(ys.reshape(-1, 1), (height, width)).reshape(-1, 1, 1)
    cx = F.broadcast_to(xs.reshape(1, -1), (height, width)).reshape(-1, 1, 1)
    half = mge.Tensor(np.asarray(sizes, np.float32)).reshape(1, -1, 1) / 2
    boxes = F.concat([cx - half, cy - half, cx + half, cy + half], axis=2)
    return boxes.reshape(-1, 4)


def decode(anchors, deltas):
    """Faster R-CNN box coding: (dx, dy, dw, dh) relative to anchor centres and sizes."""
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    cx = anchors[:, 0] + 0.5 * widths + deltas[:, 0] * widths
    cy = anchors[:, 1] + 0.5 * heights + deltas[:, 1] * heights
    w = F.exp(F.minimum(deltas[:, 2], 4.0)) * widths
    h = F.exp(F.minimum(deltas[:, 3], 4.0)) * heights
    return F.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=1)


class RetinaPostProcess(M.Module):
    """A conv head over one feature level, then decode, score threshold (boolean mask and
    cond_take), class-offset batched NMS and the kept detections; one image."""

    def __init__(self, classes: int = 3, sizes: tuple[float, ...] = (16.0, 28.0),
                 stride: int = 8, score_thresh: float = 0.6, iou: float = 0.3):
        super().__init__()
        self.classes, self.sizes, self.stride = classes, sizes, stride
        self.score_thresh, self.iou = score_thresh, iou
        self.stem = M.Conv2d(3, 8, 3, stride=stride, padding=1)
        self.cls = M.Conv2d(8, len(sizes) * classes, 3, padding=1)
        self.box = M.Conv2d(8, len(sizes) * 4, 3, padding=1)

    def forward(self, image):
        feature = F.relu(self.stem(image))
        anchors = grid_anchors(feature, self.stride, self.sizes)
        logits = self.cls(feature).transpose(0, 2, 3, 1).reshape(-1, self.classes)
        deltas = self.box(feature).transpose(0, 2, 3, 1).reshape(-1, 4) * 0.5
        scores, labels = F.max(F.sigmoid(logits), axis=1), F.argmax(logits, axis=1)
        boxes = decode(anchors, deltas)
        limit = image.shape[3] - 1
        boxes = F.clip(boxes, 0, limit)
        keep = scores > self.score_thresh
        boxes, labels = boxes[keep], labels[keep]
        scores, _ = F.cond_take(keep, scores)
        offsets = labels.astype("float32").reshape(-1, 1) * (limit + 1)
        kept = F.vision.nms(boxes + offsets, scores, self.iou, max_output=100)
        return boxes[kept], scores[kept], labels[kept]


# ---- two-stage: RPN proposals, RoIAlign, a box head ------------------------------------------
class TwoStageHead(M.Module):
    def __init__(self, sizes: tuple[float, ...] = (12.0, 24.0), stride: int = 4,
                 pre_nms: int = 40, post_nms: int = 30, classes: int = 4):
        super().__init__()
        self.sizes, self.stride, self.pre_nms, self.post_nms = sizes, stride, pre_nms, post_nms
        self.backbone = M.Sequential(M.Conv2d(3, 8, 3, stride=2, padding=1), M.ReLU(),
                                     M.Conv2d(8, 8, 3, stride=2, padding=1), M.ReLU())
        self.objectness = M.Conv2d(8, len(sizes), 1)
        self.rpn_box = M.Conv2d(8, len(sizes) * 4, 1)
        self.fc = M.Linear(8 * 4 * 4, 16)
        self.cls_score = M.Linear(16, classes)
        self.bbox_pred = M.Linear(16, classes * 4)

    def forward(self, image):
        feature = self.backbone(image)
        anchors = grid_anchors(feature, self.stride, self.sizes)
        scores = self.objectness(feature).transpose(0, 2, 3, 1).reshape(-1)
        deltas = self.rpn_box(feature).transpose(0, 2, 3, 1).reshape(-1, 4) * 0.3
        top_scores, top = F.topk(scores, self.pre_nms, descending=True)
        order = F.argsort(top_scores, descending=True)  # already sorted: exercises argsort
        proposals = F.clip(decode(anchors[top[order]], deltas[top[order]]), 0,
                           image.shape[3] - 1)
        kept = F.vision.nms(proposals, top_scores[order], 0.3, max_output=self.post_nms)
        boxes = proposals[kept]
        rois = F.concat([F.zeros((boxes.shape[0], 1)), boxes], axis=1)
        pooled = F.vision.roi_align(feature, rois, (4, 4), spatial_scale=1 / self.stride,
                                    sample_points=2, aligned=True)
        hidden = F.relu(self.fc(pooled.reshape(pooled.shape[0], -1)))
        return rois, F.softmax(self.cls_score(hidden), axis=1), self.bbox_pred(hidden)


BUILDERS = {"swin_shift": (SwinShiftBlock, (2, 8, 8, 8)),
            "retina_post": (RetinaPostProcess, (1, 3, 48, 48)),
            "two_stage": (TwoStageHead, (1, 3, 32, 32))}


def build(name: str, seed: int = 0):
    """(module with seeded weights in eval mode, example input shape)."""
    factory, shape = BUILDERS[name]
    return randomize(factory(), np.random.default_rng(seed)), shape
