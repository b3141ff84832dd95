"""`tm2onnx bench`: latency median/p90/p99 and throughput of an ONNX model in onnxruntime,
optionally beside another ONNX model and/or MegEngine, timed interleaved in one run so that the
ratios hold on a busy machine. Without --tm, MegEngine is never imported."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import Tm2OnnxError
from .common import EXIT_OK, Progress

HELP = ("time an ONNX model in onnxruntime (median/p90/p99, throughput), interleaved with "
        "--against ONNX and/or --tm MegEngine; prints the ratios")
PROGRESS_EVERY_S = 2.0


@dataclass(frozen=True)
class Latency:
    label: str
    samples: tuple[float, ...]   # seconds per run
    batch: int

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.samples, q))

    @property
    def throughput(self) -> float:
        return self.batch / self.percentile(50)

    def row(self, baseline: Latency) -> str:
        ratio = self.percentile(50) / baseline.percentile(50)
        return (f"{self.label:<36} {self.percentile(50) * 1e3:>9.2f} {self.percentile(90) * 1e3:>9.2f}"
                f" {self.percentile(99) * 1e3:>9.2f} {self.throughput:>10.1f} {ratio:>7.2f}x")


def bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="ONNX model to time")
    parser.add_argument("--against", metavar="OTHER.onnx", help="another ONNX model, same inputs")
    parser.add_argument("--tm", metavar="MODEL.tm", help="also time MegEngine on the same inputs")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                        help="onnxruntime execution provider (cpu)")
    parser.add_argument("--opt-level", choices=["disable", "basic", "extended", "all"],
                        default="all", help="onnxruntime graph optimizations (all)")
    parser.add_argument("--threads", type=int, metavar="N", help="onnxruntime intra-op threads")
    parser.add_argument("--warmup", type=int, default=5, metavar="W", help="untimed runs (5)")
    parser.add_argument("--runs", type=int, default=50, metavar="R", help="timed runs each (50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (0)")
    parser.add_argument("--dim", action="append", metavar="NAME=SIZE",
                        help="size for a symbolic input dim, e.g. --dim batch=4")


def bench_command(args: argparse.Namespace, progress: Progress) -> int:
    from ..runtime import random_feeds
    from .common import _dims, load_onnx

    if args.runs < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        raise Tm2OnnxError("--runs and --threads must be at least 1, --warmup at least 0")
    model = load_onnx(args.model)
    feeds = random_feeds(model, seed=args.seed, dims=_dims(args))
    runners = [_onnx_runner(args.model, model, feeds, args)]
    if args.against:
        runners.append(_onnx_runner(args.against, load_onnx(args.against), feeds, args))
    if args.tm:
        runners.append(_megengine_runner(args.tm, feeds, progress))
    batch = int(next(iter(feeds.values())).shape[0]) if feeds and next(
        iter(feeds.values())).ndim else 1
    results = interleaved(runners, runs=args.runs, warmup=args.warmup, progress=progress)
    latencies = [Latency(label, tuple(samples), batch) for (label, _), samples in
                 zip(runners, results)]
    print(f"bench: {len(latencies)} model(s), {args.runs} runs each after {args.warmup} warm-up, "
          f"interleaved; batch {batch}; ratio = median / median of the first")
    print(f"{'model':<36} {'median ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'samples/s':>10} "
          f"{'ratio':>8}")
    for latency in latencies:
        print(latency.row(latencies[0]))
    return EXIT_OK


Runner = tuple[str, Callable[[], object]]


def interleaved(runners: list[Runner], *, runs: int, warmup: int,
                progress: Progress | None = None) -> list[list[float]]:
    """Time each runner `runs` times, taking turns (order rotated every round), so that load
    from other processes falls on all of them alike."""
    for _, fn in runners:
        for _ in range(warmup):
            fn()
    samples: list[list[float]] = [[] for _ in runners]
    last = time.perf_counter()
    for index in range(runs):
        for offset in range(len(runners)):
            which = (index + offset) % len(runners)
            start = time.perf_counter()
            runners[which][1]()
            samples[which].append(time.perf_counter() - start)
        if progress is not None and time.perf_counter() - last > PROGRESS_EVERY_S:
            last = time.perf_counter()
            progress.step(f"bench: {index + 1}/{runs} rounds")
    return samples


def _onnx_runner(path: str, model, feeds: dict, args: argparse.Namespace) -> Runner:
    from ..runtime.session import make_session, provider

    session = make_session(model, device=args.device, opt_level=args.opt_level,
                           threads=args.threads)
    names = [i.name for i in session.get_inputs()]
    own = dict(zip(names, feeds.values()))  # by position, like validate --against
    label = f"{path} (onnxruntime {provider(session).replace('ExecutionProvider', '')})"
    return label, lambda: session.run(None, own)


def _megengine_runner(path: str, feeds: dict, progress: Progress) -> Runner:
    import megengine as mge

    from .._quiet import silence_megengine_banner
    from ..exporting.exporter import load_traced
    from ..runtime.megengine_ref import synchronous

    silence_megengine_banner()
    progress.step(f"loading {path}")
    traced = load_traced(path)
    traced.eval()
    tensors = [mge.Tensor(value) for value in feeds.values()]

    def run() -> object:
        with synchronous():
            result = traced(*tensors)
            first = result[0] if isinstance(result, (tuple, list)) else result
            return first.numpy()  # wait for the result, as onnxruntime's run does

    return f"{path} (MegEngine)", run
