"""Third-party ONNX files (torchvision, timm, transformers; random weights, exported here with
torch.onnx's legacy exporter at opset 17) through `deploy`, onnxsim and onnxslim side by side:
node counts, file sizes, whether outputs match, and each file's onnxruntime latency (ORT_ENABLE_ALL,
one thread, median of interleaved runs)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peer_models import DIMS, MODELS, export
from bench.transforms_bench import interleaved_medians
from tm2onnx.runtime import make_session, random_feeds, run_model
from tm2onnx.transforms import run_pipeline

PEERS = ("onnxsim", "onnxslim")
TOLERANCE = 1e-4  # max abs difference vs the exported file, all outputs (fp32)


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


def latencies_ms(models: dict[str, onnx.ModelProto], feeds: dict, runs: int
                 ) -> dict[str, float]:
    """Median ms of each at ORT_ENABLE_ALL on one thread, runs interleaved so machine load
    hits every variant alike."""
    sessions = {key: make_session(model, opt_level="all", threads=1)
                for key, model in models.items()}
    return {key: value * 1e3 for key, value in interleaved_medians(sessions, feeds, runs).items()}


def max_diff(reference: dict, got: dict) -> float:
    worst = 0.0
    for (name, ref), out in zip(reference.items(), got.values()):
        if ref.shape != out.shape:
            return float("inf")
        if ref.size:
            worst = max(worst, float(np.abs(ref.astype(np.float64) - out).max()))
    return worst


def measure(name: str, raw: onnx.ModelProto, runs: int) -> list[str]:
    feeds = random_feeds(raw, seed=0, dims=DIMS)
    reference = run_model(raw, feeds, opt_level="disable")
    cells = [name, str(len(raw.graph.node)), f"{raw.ByteSize() / 2**20:.2f}"]
    outputs, texts = {"exported": raw}, {}
    for tool, runner in RUNNERS.items():
        if tool in PEERS and not importlib.util.find_spec(tool):
            texts[tool] = "not installed"
            continue
        try:
            start = time.perf_counter()
            out = runner(raw)
            seconds = time.perf_counter() - start
            diff = max_diff(reference, run_model(out, feeds, opt_level="disable"))
        except Exception as err:  # noqa: BLE001 — a failure is a result to print
            texts[tool] = f"failed: {str(err).splitlines()[0][:40]}"
            continue
        outputs[tool] = out
        ok = "ok" if diff <= TOLERANCE else f"DIFF {diff:.1e}"
        texts[tool] = (f"{len(out.graph.node)} nodes, {out.ByteSize() / 2**20:.2f} MB, "
                       f"{seconds:.1f} s, {ok}")
    latency = latencies_ms(outputs, feeds, runs)
    cells[1] += f", {latency['exported']:.1f} ms"
    cells += [texts[tool] + (f", {latency[tool]:.1f} ms" if tool in latency else "")
              for tool in RUNNERS]
    return [*cells, verdict(outputs)]


def verdict(outputs: dict[str, onnx.ModelProto]) -> str:
    """deploy against the best peer: nodes, and the file's bytes against the smallest peer's."""
    peers = [outputs[p] for p in PEERS if p in outputs]
    if not peers or "deploy" not in outputs:
        return "-"
    mine = outputs["deploy"]
    nodes = len(mine.graph.node) - min(len(p.graph.node) for p in peers)
    smallest = min(peers, key=lambda p: p.ByteSize())
    size = mine.ByteSize() - smallest.ByteSize()
    names = name_bytes(mine) - name_bytes(smallest)
    data = parameter_bytes(mine) - min(parameter_bytes(p) for p in peers)
    return ", ".join([
        "nodes ≤ best" if nodes <= 0 else f"nodes +{nodes}",
        "file ≤ smallest" if size <= 0 else f"file +{size} B (names {names:+} B)",
        "parameters ≤ smallest" if data <= 0 else f"parameters +{data} B"])


def name_bytes(model: onnx.ModelProto) -> int:
    """Bytes of names: nodes', and tensors' wherever written (node inputs/outputs,
    initializers, value_info, graph I/O)."""
    graph = model.graph
    tensors = [*graph.initializer, *graph.value_info, *graph.input, *graph.output]
    return (sum(len(n.name) + sum(map(len, [*n.input, *n.output])) for n in graph.node)
            + sum(len(t.name) for t in tensors))


def parameter_bytes(model: onnx.ModelProto) -> int:
    """Bytes of floating-point tensor data (initializers and Constant nodes' values): the
    weights. Integer shape vectors (Reshape targets, Split sizes) count with the structure:
    a pinned target is 16-32 bytes where the peers keep a Shape/Gather/Concat chain."""
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node if n.op_type == "Constant"
                                            for a in n.attribute if a.name == "value")]
    arrays = (numpy_helper.to_array(t) for t in tensors)
    return sum(a.nbytes for a in arrays if np.issubdtype(a.dtype, np.floating))


def load_or_export(name: str, cache: Path | None) -> onnx.ModelProto:
    """The exported file, from `cache` when it holds one (exports take minutes), else fresh."""
    path = cache / (name.split(" ")[0] + ".onnx") if cache else None
    if path is not None and path.is_file():
        return onnx.load(path)
    raw = export(name)
    if path is not None:  # atomically: other readers of the folder never see half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        onnx.save(raw, partial)
        os.replace(partial, path)
    return raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", help="comma-separated subset of: " + ", ".join(MODELS))
    parser.add_argument("--runs", type=int, default=30, help="latency runs per model (30)")
    parser.add_argument("--cache", type=Path, help="keep/reuse exported files in this folder")
    parser.add_argument("--export-only", action="store_true",
                        help="export into --cache and stop (no peers, no timing)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.models.split(",")] if args.models else list(MODELS)
    header = ["model", "nodes, ORT-all ms (1 thread)", "MB", *RUNNERS, "deploy vs peers"]
    print(" | ".join(header), flush=True)
    for name in names:
        try:
            raw = load_or_export(name, args.cache)
        except Exception as err:  # noqa: BLE001
            print(f"{name} | export failed: {str(err).splitlines()[0][:80]}", flush=True)
            continue
        if args.export_only:
            print(f"{name} | exported, {len(raw.graph.node)} nodes", flush=True)
            continue
        print(" | ".join(measure(name, raw, args.runs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
