"""Regenerate tm2onnx's golden models: `python models/make_models.py [--out models] [--large]`.

Every model is built with seeded weights (`nets.randomize`), traced in eval mode and pickled,
so reruns reproduce the files. Small fixtures are committed; big architectures go to
`<out>/large/` (git-ignored) only with --large. `build(name)` gives tests and bench the same nets."""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import re
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make `models` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import archs, nets

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    make: Callable[[], Any]          # an un-initialized megengine Module
    shapes: tuple[Shape, ...]        # one float32 input per shape
    description: str
    large: bool = False              # too big to commit: generated only with --large
    low: float = -1.0                # example inputs are uniform in [low, high)
    high: float = 1.0

    @property
    def file(self) -> str:
        return f"large/{self.name}.tm" if self.large else f"{self.name}.tm"


SPECS = {spec.name: spec for spec in (
    ModelSpec("main", nets.Main, ((1, 14, 8, 8),),
              "guide: identity 'main model' that pre/post-processing wraps"),
    ModelSpec("pre_post", nets.pre_post_net, ((1, 14, 8, 8), (1, 14, 8, 8)),
              "guide: x*y -> traced (pickled, reloaded) Main -> /y, re-traced with two inputs",
              low=0.5, high=1.5),
    ModelSpec("const_scale", nets.ConstScaleNet, ((1, 3, 16, 16),),
              "guide: Conv2d(3,16,1) then *8 then /128 (constants to absorb into the conv)"),
    ModelSpec("big_linear", lambda: nets.BigLinearNet(hidden=256, out=512), ((1, 3),),
              "guide fp16 example scaled to commit: Linear(3,256) -> Linear(256,512); only the "
              "second passes the guide's in*out >= 100*1024 test, as in the guide"),
    ModelSpec("conv_bn_concat", nets.ConvBnConcatNet, ((1, 3, 16, 16),),
              "guide dataflow: conv -> bn -> Sequential(conv, bn) -> concat(bn, conv_bn)"),
    ModelSpec("conv_bn_relu", nets.ConvBnReluNet, ((1, 3, 16, 16),),
              "guide Conv+BN fusion: conv -> bn -> relu -> Sequential(conv, bn)"),
    ModelSpec("transformer_block", archs.TransformerBlock, ((1, 16, 64),),
              "pre-LN encoder block: 4-head attention (matmul, softmax), LayerNorm, GELU MLP"),
    ModelSpec("big_linear_guide", nets.BigLinearNet, ((1, 3),),
              "guide fp16 example at its size: Linear(3,1024) -> Linear(1024,4096)", large=True),
    ModelSpec("resnet18", archs.resnet18, ((1, 3, 224, 224),),
              "ResNet-18, torchvision BasicBlock layout", large=True),
    ModelSpec("resnet50", archs.resnet50, ((1, 3, 224, 224),),
              "ResNet-50, torchvision Bottleneck (v1.5) layout", large=True),
    ModelSpec("mobilenet_v2", archs.MobileNetV2, ((1, 3, 224, 224),),
              "MobileNetV2 1.0: inverted residuals, depthwise convs, ReLU6", large=True),
    ModelSpec("shufflenet_v2", archs.ShuffleNetV2, ((1, 3, 224, 224),),
              "ShuffleNetV2 1.0: channel shuffle (reshape/transpose), F.split, concat",
              large=True),
)}


def seed_of(name: str) -> int:
    """A per-model seed, so adding a model never changes another's weights."""
    return zlib.crc32(name.encode())


def example_inputs(spec: ModelSpec, shapes: Sequence[Shape] | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed_of(spec.name) + 1)
    return [rng.uniform(spec.low, spec.high, size=shape).astype(np.float32)
            for shape in (shapes or spec.shapes)]


def build(name: str, *, shapes: Sequence[Shape] | None = None) -> tuple[Any, list[np.ndarray]]:
    """(TracedModule in eval mode, seeded float32 numpy inputs) for a model in SPECS.

    `shapes` overrides the input shapes (e.g. ResNet-50 at 64x64 in tests); weights do not
    depend on it."""
    import megengine as mge
    import megengine.traced_module as tm

    if name not in SPECS:
        raise KeyError(f"unknown model {name!r}; choose from {', '.join(SPECS)}")
    spec = SPECS[name]
    mge.random.seed(seed_of(name))
    net = nets.randomize(spec.make(), np.random.default_rng(seed_of(name)))
    inputs = example_inputs(spec, shapes)
    traced = tm.trace_module(net, *[mge.Tensor(x) for x in inputs])
    traced.eval()
    return traced, inputs


def forward(traced: Any, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """MegEngine's outputs as numpy arrays, flattened in graph-output order."""
    import megengine as mge

    result = traced(*[mge.Tensor(x) for x in inputs])
    items = result if isinstance(result, (tuple, list)) else [result]
    return [item.numpy() for item in items]


def input_entries(traced: Any) -> list[dict[str, Any]]:
    return [{"name": node.name, "shape": list(node.shape), "dtype": str(np.dtype(node.dtype))}
            for node in traced.graph.inputs[1:]]


def write_model(spec: ModelSpec, out: Path) -> dict[str, Any]:
    """Trace, pickle to `out/spec.file`, and return the manifest entry."""
    traced, _ = build(spec.name)
    data = pickle.dumps(traced)
    path = out / spec.file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"name": spec.name, "file": spec.file, "inputs": input_entries(traced),
            "input_range": [spec.low, spec.high], "seed": seed_of(spec.name),
            "description": spec.description, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def write_manifest(entries: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"models": entries}, indent=2)
    # keep number lists (shapes, ranges) on one line
    text = re.sub(r'\[\s+([^\[\]{}"]*?)\s+\]', lambda m: f"[{' '.join(m.group(1).split())}]", text)
    path.write_text(text + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent,
                        help="output folder (default: the models/ folder beside this file)")
    parser.add_argument("--large", action="store_true",
                        help="also write the large architectures to <out>/large/ (not committed)")
    args = parser.parse_args(argv)
    groups = [(False, args.out / "manifest.json")]
    if args.large:
        groups.append((True, args.out / "large" / "manifest.json"))
    for large, manifest in groups:
        entries = []
        for spec in (s for s in SPECS.values() if s.large == large):
            entry = write_model(spec, args.out)
            print(f"{entry['file']:<32} {entry['bytes'] / 1e6:8.2f} MB  {spec.description}")
            entries.append(entry)
        write_manifest(entries, manifest)
        print(f"wrote {manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
