"""Third-party ONNX files (torchvision, timm, transformers; random weights, exported here with
torch.onnx's legacy exporter at opset 17) through `deploy`, onnxsim and onnxslim side by side:
node counts, file sizes, whether outputs match, onnxruntime latency (ORT_ENABLE_ALL)."""

from __future__ import annotations

import argparse
import importlib.util
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.transforms_bench import interleaved_medians
from tm2onnx.runtime import make_session, random_feeds, run_model
from tm2onnx.transforms import run_pipeline

PEERS = ("onnxsim", "onnxslim")
TOLERANCE = 1e-4  # max abs difference vs the exported file, all outputs (fp32)


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


MODELS: dict[str, Callable[[], tuple]] = {
    "resnet18": _torchvision("resnet18"),
    "convnext_tiny": _torchvision("convnext_tiny"),
    "vit_b_16": _torchvision("vit_b_16"),
    "efficientvit_m0 (timm)": _timm("efficientvit_m0"),
    "ssdlite320": _detector("ssdlite320_mobilenet_v3_large", 320),
    "fasterrcnn_mobilenet_320": _detector("fasterrcnn_mobilenet_v3_large_320_fpn", 320),
    "bert-tiny (transformers)": _bert_tiny,
}


def export(build: Callable[[], tuple]) -> onnx.ModelProto:
    import torch

    torch.manual_seed(0)
    torch.backends.mha.set_fastpath_enabled(False)  # eval-mode MHA fast path has no ONNX op
    net, args = build()
    net.eval()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, args, buffer, dynamo=False, opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


def _onnxsim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError("onnxsim's own check failed")
    return simplified


def _onnxslim(model: onnx.ModelProto) -> onnx.ModelProto:
    import onnxslim

    return onnxslim.slim(model)


RUNNERS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "deploy": lambda model: run_pipeline(model, ["deploy"])[0],
    "onnxsim": _onnxsim,
    "onnxslim": _onnxslim,
}


def latency_ms(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict, runs: int
               ) -> tuple[float, float]:
    """Median ms of both at ORT_ENABLE_ALL, runs interleaved so machine load hits both alike."""
    sessions = {key: make_session(model, opt_level="all", threads=2)
                for key, model in (("before", before), ("after", after))}
    medians = interleaved_medians(sessions, feeds, runs)
    return medians["before"] * 1e3, medians["after"] * 1e3


def max_diff(reference: dict, got: dict) -> float:
    worst = 0.0
    for (name, ref), out in zip(reference.items(), got.values()):
        if ref.shape != out.shape:
            return float("inf")
        if ref.size:
            worst = max(worst, float(np.abs(ref.astype(np.float64) - out).max()))
    return worst


def measure(name: str, raw: onnx.ModelProto, runs: int) -> list[str]:
    feeds = random_feeds(raw, seed=0)
    reference = run_model(raw, feeds, opt_level="disable")
    cells = [name, str(len(raw.graph.node)), f"{raw.ByteSize() / 2**20:.1f}"]
    counts = {}
    for peer, runner in RUNNERS.items():
        if peer in PEERS and not importlib.util.find_spec(peer):
            cells.append("not installed")
            continue
        try:
            start = time.perf_counter()
            out = runner(raw)
            seconds = time.perf_counter() - start
            diff = max_diff(reference, run_model(out, feeds, opt_level="disable"))
        except Exception as err:  # noqa: BLE001 — a failure is a result to print
            cells.append(f"failed: {str(err).splitlines()[0][:40]}")
            continue
        counts[peer] = len(out.graph.node)
        ok = "ok" if diff <= TOLERANCE else f"DIFF {diff:.1e}"
        extra = ""
        if peer == "deploy":
            before, after = latency_ms(raw, out, feeds, runs)
            extra = f", ORT-all {before:.1f}→{after:.1f} ms"
        cells.append(f"{len(out.graph.node)} nodes, {out.ByteSize() / 2**20:.1f} MB, "
                     f"{seconds:.1f} s, {ok}{extra}")
    best = min((counts[p] for p in PEERS if p in counts), default=None)
    verdict = "-" if best is None or "deploy" not in counts else (
        "≤ best peer" if counts["deploy"] <= best else f"+{counts['deploy'] - best} vs best")
    return [*cells, verdict]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--runs", type=int, default=10, help="latency runs per model")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",")] if args.models else list(MODELS)
    header = ["model", "nodes", "MB", *RUNNERS, "deploy vs peers"]
    print(" | ".join(header), flush=True)
    for name in names:
        try:
            raw = export(MODELS[name])
        except Exception as err:  # noqa: BLE001
            print(f"{name} | export failed: {str(err).splitlines()[0][:80]}", flush=True)
            continue
        print(" | ".join(measure(name, raw, args.runs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
