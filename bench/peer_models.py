"""The third-party models bench/onnx_peers.py exports: torchvision, timm and transformers
builders (random weights, nothing downloaded), spread so no parameter is trivially 0 or 1."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable

import onnx


def _nms(dets, scores, iou_threshold: float):
    """torchvision's nms in plain torch (greedy, highest score first)."""
    import torch

    x1, y1, x2, y2 = dets.unbind(1)
    areas = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    suppressed = torch.zeros(len(dets), dtype=torch.bool)
    keep = []
    for i in scores.argsort(descending=True).tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
        h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
        suppressed |= w * h / (areas[i] + areas - w * h) > iou_threshold
    return torch.tensor(keep, dtype=torch.int64)


def _ops_present() -> None:
    pass


def import_torchvision():
    """torchvision; when its compiled ops cannot load (a CUDA torchvision wheel beside a CPU
    torch), nms is defined in Python and roi_align uses torchvision's own Python fallback, so
    the detectors still trace (their ONNX still has NonMaxSuppression)."""
    import torch

    try:
        import torchvision
        return torchvision
    except RuntimeError:
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", _nms, "CPU")
    import torchvision
    from torchvision.ops import boxes

    boxes._assert_has_ops = _ops_present  # a def, not a lambda: batched_nms gets scripted
    torchvision._bench_ops_library = lib
    return torchvision


def _torchvision(name: str, size: int = 224, **kwargs) -> Callable[[], tuple]:
    def build():
        import torch
        torchvision = import_torchvision()

        net = getattr(torchvision.models, name)(weights=None, **kwargs)
        return net, (torch.randn(1, 3, size, size),)
    return build


def _detector(name: str, size: int) -> Callable[[], tuple]:
    def build():
        import torch
        torchvision = import_torchvision()

        net = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None)
        return net, ([torch.rand(3, size, size)],)
    return build


def _timm(name: str) -> Callable[[], tuple]:
    def build():
        import_torchvision()  # timm imports it
        import timm
        import torch

        return timm.create_model(name, pretrained=False), (torch.randn(1, 3, 224, 224),)
    return build


def _bert_tiny() -> tuple:
    import torch

    import_torchvision()  # transformers imports it
    from transformers import BertConfig, BertModel

    config = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=512, vocab_size=1000)
    class Encoder(torch.nn.Module):  # keyword arguments only: BertModel's order changes
        def __init__(self) -> None:
            super().__init__()
            self.bert = BertModel(config)

        def forward(self, ids, mask):
            return self.bert(input_ids=ids, attention_mask=mask).last_hidden_state

    ids = torch.randint(0, 1000, (1, 64))
    return Encoder(), (ids, torch.ones_like(ids))


def _transformers(config_name: str, model_name: str, inputs: Callable[[object], tuple],
                  output: str, **config) -> Callable[[], tuple]:
    """A transformers model from its config class (random weights), returning one tensor."""
    def build():
        import torch

        import_torchvision()  # transformers imports it
        import transformers

        cfg = getattr(transformers, config_name)(**config)
        net = _model_class(transformers, model_name, cfg.model_type)(cfg)

        class One(torch.nn.Module):  # one named output: the tuple's layout varies by version
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x):
                return getattr(self.net(x), output)
        return One(), inputs(cfg)
    return build


def _model_class(transformers, name: str, model_type: str):
    """A model class by name: top-level, else from its model's module (transformers 5 stopped
    exporting sub-models such as WhisperEncoder at the top level)."""
    if hasattr(transformers, name):
        return getattr(transformers, name)
    import importlib

    return getattr(importlib.import_module(
        f"transformers.models.{model_type}.modeling_{model_type}"), name)


def _ids(cfg) -> tuple:
    import torch

    return (torch.randint(0, 1000, (1, 64)),)


def _image(size: int) -> Callable[[object], tuple]:
    def inputs(cfg) -> tuple:
        import torch

        return (torch.randn(1, 3, size, size),)
    return inputs


def _mel(cfg) -> tuple:
    import torch

    return (torch.randn(1, cfg.num_mel_bins, 2 * cfg.max_source_positions),)


MODELS: dict[str, Callable[[], tuple]] = {
    "resnet18": _torchvision("resnet18"),
    "convnext_tiny": _torchvision("convnext_tiny"),
    "vit_b_16": _torchvision("vit_b_16"),
    "swin_t": _torchvision("swin_t"),
    "efficientvit_m0 (timm)": _timm("efficientvit_m0"),
    "repvgg_a0 (timm)": _timm("repvgg_a0"),
    "levit_128s (timm)": _timm("levit_128s"),
    "fastvit_t8 (timm)": _timm("fastvit_t8"),
    "mobilevit_s (timm)": _timm("mobilevit_s"),
    "ssdlite320": _detector("ssdlite320_mobilenet_v3_large", 320),
    "fasterrcnn_mobilenet_320": _detector("fasterrcnn_mobilenet_v3_large_320_fpn", 320),
    "retinanet_r50": _detector("retinanet_resnet50_fpn", 320),
    "keypointrcnn_r50": _detector("keypointrcnn_resnet50_fpn", 320),
    "bert-tiny (transformers)": _bert_tiny,
    "distilbert dynamic (transformers)": _transformers(
        "DistilBertConfig", "DistilBertModel", _ids, "last_hidden_state", vocab_size=1000),
    "whisper-tiny encoder (transformers)": _transformers(
        "WhisperConfig", "WhisperEncoder", _mel, "last_hidden_state", d_model=384,
        encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536, num_mel_bins=80,
        max_source_positions=1500),
    "t5-small encoder (transformers)": _transformers(
        "T5Config", "T5EncoderModel", _ids, "last_hidden_state", vocab_size=1000),
    "segformer-b0 (transformers)": _transformers(
        "SegformerConfig", "SegformerForSemanticSegmentation", _image(224), "logits"),
    "detr-r50 (transformers)": _transformers(
        "DetrConfig", "DetrForObjectDetection", _image(320), "logits", use_timm_backbone=True,
        use_pretrained_backbone=False, backbone="resnet50"),
}
# Exported with dynamic axes (symbolic dims in the file, as users' exports have), and the
# sizes fed for them.
DYNAMIC_AXES = {"distilbert dynamic (transformers)": {"x": {0: "batch", 1: "sequence"}}}
DIMS = {"batch": 1, "sequence": 64}


def spread_parameters(net) -> None:
    """Random BatchNorm statistics, and noise on every single-valued parameter (zero biases,
    unit scales, layer-scale constants): fresh values hide folds that are wrong only for
    general ones (x + 0 is x; a BN with mean 0 and var 1 is nearly the identity)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and \
                    module.running_mean is not None:
                count = module.running_mean.numel()
                module.running_mean.copy_(torch.randn(count, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(count, generator=generator) + 0.5)
        for param in net.parameters():
            if param.numel() > 1 and bool((param == param.flatten()[0]).all()):
                param.add_(torch.randn(param.shape, generator=generator) * 0.02)


def export(name: str) -> onnx.ModelProto:
    import torch

    torch.manual_seed(0)
    torch.backends.mha.set_fastpath_enabled(False)  # eval-mode MHA fast path has no ONNX op
    net, args = MODELS[name]()
    net.eval()
    spread_parameters(net)
    axes = DYNAMIC_AXES.get(name)
    names = {"input_names": list(axes), "dynamic_axes": axes} if axes else {}
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, args, buffer, dynamo=False, opset_version=17, **names)
    return onnx.load_from_string(buffer.getvalue())
