"""deploy with and without its merge of parallel projections (Q, K, V as one MatMul +
Split) on exported models (bench/onnx_peers.py): nodes, max abs diff against the
export (ORT optimizations off) and onnxruntime CPU latency (ORT_ENABLE_ALL, 1 thread): medians
and the median of per-round ratios, the two variants run back to back in alternating order."""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peer_models import DIMS
from tm2onnx.runtime import make_session, random_feeds
from tm2onnx.transforms import DEPLOY_PIPELINE, run_pipeline


def deployed(model: onnx.ModelProto, merge: bool) -> onnx.ModelProto:
    steps = [s for s in DEPLOY_PIPELINE if merge or s != "merge-parallel-matmuls"]
    return run_pipeline(model, steps)[0]


def max_abs_diff(reference: list, model: onnx.ModelProto, feeds: dict) -> float:
    got = make_session(model, opt_level="disable").run(None, feeds)
    return max((float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
                for a, b in zip(reference, got) if np.asarray(a).size), default=0.0)


def paired(sessions: dict, feeds: dict, runs: int) -> tuple[dict[str, float], float]:
    times: dict[str, list[float]] = {key: [] for key in sessions}
    for session in sessions.values():
        session.run(None, feeds)  # warm-up
    ratios = []
    for index in range(runs):
        for key in (list(sessions) if index % 2 == 0 else list(sessions)[::-1]):
            start = time.perf_counter()
            sessions[key].run(None, feeds)
            times[key].append(time.perf_counter() - start)
        ratios.append(times["merged"][-1] / times["unmerged"][-1])
    return {key: statistics.median(v) for key, v in times.items()}, statistics.median(ratios)


def counts(model: onnx.ModelProto) -> str:
    ops = collections.Counter(node.op_type for node in model.graph.node)
    return f"{len(model.graph.node)} (MatMul {ops['MatMul']}, Split {ops['Split']})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("models", nargs="+", type=Path, help="exported .onnx files")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    print("| model | nodes unmerged | nodes merged | max abs diff | ms unmerged / merged | ratio |")
    for path in args.models:
        model = onnx.load(path)
        feeds = random_feeds(model, seed=0, dims=DIMS)
        variants = {"unmerged": deployed(model, False), "merged": deployed(model, True)}
        reference = make_session(model, opt_level="disable").run(None, feeds)
        diffs = " / ".join(f"{max_abs_diff(reference, m, feeds):.2g}" for m in variants.values())
        sessions = {key: make_session(m, threads=1) for key, m in variants.items()}
        medians, ratio = paired(sessions, feeds, args.runs)
        print(f"| {path.stem} | {counts(variants['unmerged'])} | {counts(variants['merged'])} | "
              f"{diffs} | {medians['unmerged'] * 1e3:.2f} / {medians['merged'] * 1e3:.2f} | "
              f"{(ratio - 1) * 100:+.1f}% |", flush=True)


if __name__ == "__main__":
    main()
