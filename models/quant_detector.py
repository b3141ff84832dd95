"""A QAT detector in MegEngine/Models' quantized RetinaNet style (official/quantization/
retinanet): a quantized backbone returning a dict of levels, one DequantStub per level (a
Sequential zipped over the dict), then a float FPN and a float head shared by every level
(`disable_quantize()` before `quantize_qat`), so one model mixes QDQ and float layers."""

from __future__ import annotations

import megengine.functional as F
import megengine.module as M

from .quant import QuantBasicBlock

LEVELS = ("res3", "res4", "res5")


class QuantBackbone(M.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = M.ConvBnRelu2d(3, width, 3, 2, 1, bias=False)
        self.res3 = QuantBasicBlock(width, 2 * width, 2)
        self.res4 = QuantBasicBlock(2 * width, 4 * width, 2)
        self.res5 = QuantBasicBlock(4 * width, 8 * width, 2)
        self.channels = (2 * width, 4 * width, 8 * width)

    def extract_features(self, x):
        c3 = self.res3(self.stem(x))
        c4 = self.res4(c3)
        return {"res3": c3, "res4": c4, "res5": self.res5(c4)}

    def forward(self, x):
        return self.extract_features(x)


class FloatFPN(M.Module):
    """Float lateral/output convs and adds on the dequantized levels, top-down by bilinear x2."""

    def __init__(self, bottom_up: QuantBackbone, out_channels: int = 16):
        super().__init__()
        self.bottom_up = bottom_up
        self.lateral_convs, self.output_convs = [], []
        for stage, channels in zip((3, 4, 5), bottom_up.channels):
            lateral = M.Conv2d(channels, out_channels, 1)
            output = M.Conv2d(out_channels, out_channels, 3, padding=1)
            lateral.disable_quantize()
            output.disable_quantize()
            setattr(self, f"fpn_lateral{stage}", lateral)
            setattr(self, f"fpn_output{stage}", output)
            self.lateral_convs.insert(0, lateral)
            self.output_convs.insert(0, output)
        self.add_module = M.Sequential(*[M.Elemwise("ADD") for _ in range(len(LEVELS) - 1)])
        self.add_module.disable_quantize()
        self.quant = M.QuantStub()
        self.dequant = M.Sequential(*[M.DequantStub() for _ in LEVELS])

    def forward(self, x):
        features = self.bottom_up.extract_features(self.quant(x))
        features = {key: dequant(features[key]) for dequant, key in zip(self.dequant, features)}
        levels = [features[key] for key in LEVELS[::-1]]
        previous = self.lateral_convs[0](levels[0])
        results = [self.output_convs[0](previous)]
        for level, lateral, output, add in zip(levels[1:], self.lateral_convs[1:],
                                               self.output_convs[1:], self.add_module):
            top_down = F.nn.interpolate(previous, scale_factor=2, mode="bilinear")
            previous = add(lateral(level), top_down)
            results.insert(0, output(previous))
        return results


class SharedHead(M.Module):
    """One float head called on every level (each its own shape)."""

    def __init__(self, channels: int = 16, anchors: int = 3, classes: int = 4):
        super().__init__()
        self.cls_subnet = M.Sequential(M.Conv2d(channels, channels, 3, padding=1), M.ReLU())
        self.cls_score = M.Conv2d(channels, anchors * classes, 3, padding=1)
        self.bbox_pred = M.Conv2d(channels, anchors * 4, 3, padding=1)
        self.classes = classes

    def forward(self, features):
        logits, boxes = [], []
        for feature in features:
            logits.append(self.cls_score(self.cls_subnet(feature)))
            boxes.append(self.bbox_pred(feature))
        return logits, boxes


class QuantRetinaTiny(M.Module):
    def __init__(self):
        super().__init__()
        self.fpn = FloatFPN(QuantBackbone())
        self.head = SharedHead()
        self.head.disable_quantize()

    def forward(self, x):
        logits, boxes = self.head(self.fpn(x))
        batch = x.shape[0]
        scores = F.concat([F.sigmoid(t.transpose(0, 2, 3, 1).reshape(batch, -1, self.head.classes))
                           for t in logits], axis=1)
        deltas = F.concat([t.transpose(0, 2, 3, 1).reshape(batch, -1, 4) for t in boxes], axis=1)
        return scores, deltas
