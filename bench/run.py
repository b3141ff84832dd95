"""tm2onnx bench on ResNet-50 (1x3x224x224, seeded random weights, built in memory):
`python bench/run.py [--quick]`. Prints export time and memory, MegEngine and onnxruntime CPU
latency (2 threads each), a big-graph row (a 16k-expr deep MLP: export vs trace_module, growth
for 4x exprs) and PASS/MISS against the project's targets. Sections are functions."""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from bench.common import Row, Timing, check, print_table, timed
from tm2onnx._quiet import quiet_megengine

THREADS = 2
MODEL = "resnet50"
# targets
EXPORT_MAX_S = 0.6             # absolute export wall time
EXPORT_MAX_FORWARDS = 4.0      # export time / one MegEngine forward pass
ORT_MAX_FRACTION = 1 / 3       # onnxruntime latency / MegEngine latency
DEEP_FP32 = {"rtol": 1e-4, "atol": 1e-4}  # as tests/test_models.py: sanity of what we time
BIG_EXPRS = 16_000             # big-graph row: a deep residual MLP of about this many exprs
EXPORT_MAX_TRACE = 1.0         # its export time / MegEngine's own trace_module time
GROWTH_MAX = 4.5               # export time growth for 4x the exprs


@dataclass
class Bench:
    traced: Any
    inputs: list[np.ndarray]
    exprs: int
    export_runs: int
    latency_runs: int
    quick: bool = False
    model: Any = None
    timings: dict[str, Timing] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)


def setup(quick: bool) -> Bench:
    """Build ResNet-50 on MegEngine's 2-thread CPU device (params live where they are made)."""
    with quiet_megengine():
        import megengine as mge

        mge.set_default_device(f"multithread{THREADS}")  # 'multithreadN': N worker threads
        from models.make_models import build

        traced, inputs = build(MODEL)
    exprs = len(list(traced.flatten().graph.exprs()))
    return Bench(traced, inputs, exprs, export_runs=3 if quick else 5,
                 latency_runs=5 if quick else 10, quick=quick)


def export_section(bench: Bench) -> None:
    """Warm-up export (its ru_maxrss growth), one under tracemalloc, then the timed median."""
    import tm2onnx

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    bench.model = tm2onnx.export(bench.traced)
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    tracemalloc.start()
    tm2onnx.export(bench.traced)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    timing = timed(lambda: tm2onnx.export(bench.traced), runs=bench.export_runs, warmup=0)
    bench.timings["export"] = timing
    size = bench.model.ByteSize() / 1e6
    bench.rows += [
        Row("export", "ONNX model", f"{len(bench.model.graph.node)} nodes, {size:.1f} MB"),
        check("export", "wall time (warm)", str(timing), timing.median <= EXPORT_MAX_S,
              f"<= {EXPORT_MAX_S} s"),
        Row("export", "throughput", f"{bench.exprs / timing.median:,.0f} exprs/s "
            f"({bench.exprs} exprs)"),
        Row("export", "peak memory (tracemalloc)", f"{peak / 2**20:.1f} MiB"),
        Row("export", "peak RSS growth (ru_maxrss)", f"{rss_growth / 1024:.1f} MiB"),
    ]


def megengine_section(bench: Bench) -> None:
    from models.make_models import forward

    timing = timed(lambda: forward(bench.traced, bench.inputs), runs=bench.latency_runs,
                   warmup=2)
    bench.timings["megengine"] = timing
    bench.rows.append(Row("megengine", f"CPU forward ({THREADS} threads)", str(timing)))
    if "export" in bench.timings:
        ratio = bench.timings["export"].median / timing.median
        bench.rows.append(check("export", "export / MegEngine forward", f"{ratio:.3f}x",
                                ratio <= EXPORT_MAX_FORWARDS, f"<= {EXPORT_MAX_FORWARDS:g}x"))


def runtime_section(bench: Bench) -> None:
    """onnxruntime (all graph optimizations, 2 intra-op threads) on the exported model."""
    from models.make_models import forward
    from tm2onnx.runtime import compare, make_session

    session = make_session(bench.model, threads=THREADS)
    names = [value.name for value in session.get_inputs()]
    feeds = dict(zip(names, bench.inputs))
    timing = timed(lambda: session.run(None, feeds), runs=bench.latency_runs, warmup=2)
    bench.timings["onnxruntime"] = timing
    outputs = [value.name for value in session.get_outputs()]
    got = dict(zip(outputs, session.run(None, feeds)))
    result = compare(dict(zip(outputs, forward(bench.traced, bench.inputs))), got, **DEEP_FP32)
    worst = max(diff.max_abs for diff in result.diffs)
    bench.rows += [
        Row("onnxruntime", f"CPU latency ({THREADS} threads)", str(timing)),
        check("onnxruntime", "matches MegEngine", f"max abs diff {worst:.2g}", bool(result),
              f"rtol {DEEP_FP32['rtol']:g}, atol {DEEP_FP32['atol']:g}"),
    ]
    if "megengine" in bench.timings:
        ratio = timing.median / bench.timings["megengine"].median
        bench.rows.append(check("onnxruntime", "onnxruntime / MegEngine", f"{ratio:.3f}",
                                ratio <= ORT_MAX_FRACTION, f"<= {ORT_MAX_FRACTION:.2f}"))


def deep_mlp(blocks: int) -> Any:
    """`blocks` residual blocks x + fc2(relu(fc1(x))), each its own traced submodule: about
    six exprs per block once flattened."""
    import megengine.functional as F
    import megengine.module as M

    class Block(M.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = M.Linear(16, 16), M.Linear(16, 16)

        def forward(self, x):
            return x + self.fc2(F.relu(self.fc1(x)))

    class DeepMLP(M.Module):
        def __init__(self):
            super().__init__()
            self.blocks = [Block() for _ in range(blocks)]

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    return DeepMLP()


def _trace_and_export(exprs: int) -> tuple[int, float, float]:
    """(flattened exprs, trace_module seconds, export seconds), one run each (big graphs)."""
    import time

    import megengine as mge
    import megengine.traced_module as tm

    import tm2onnx

    net = deep_mlp(max(1, exprs // 6))
    net.eval()
    start = time.perf_counter()
    traced = tm.trace_module(net, mge.Tensor(np.ones((2, 16), np.float32)))
    trace_s = time.perf_counter() - start
    start = time.perf_counter()
    tm2onnx.export(traced)
    export_s = time.perf_counter() - start
    return len(list(traced.flatten().graph.exprs())), trace_s, export_s


def big_graph_section(bench: Bench) -> None:
    """Export vs MegEngine's own trace_module on a deep residual MLP, and growth for 4x exprs."""
    size = BIG_EXPRS // 4 if bench.quick else BIG_EXPRS
    small_exprs, _, small_s = _trace_and_export(size // 4)
    exprs, trace_s, export_s = _trace_and_export(size)
    ratio, growth = export_s / trace_s, export_s / small_s
    bench.rows += [
        Row("big graph", f"deep MLP, {exprs} exprs", f"export {export_s:.2f} s, "
            f"trace_module {trace_s:.2f} s"),
        check("big graph", "export / trace_module", f"{ratio:.2f}x", ratio <= EXPORT_MAX_TRACE,
              f"<= {EXPORT_MAX_TRACE:g}x"),
        check("big graph", f"export growth {small_exprs} -> {exprs} exprs", f"{growth:.2f}x",
              growth <= GROWTH_MAX, f"<= {GROWTH_MAX:g}x"),
    ]


SECTIONS = (export_section, megengine_section, runtime_section, big_graph_section)


def run_section(section: Any, bench: Bench) -> None:
    """A failing section becomes one MISS row (first line of the error) and the rest still run."""
    from tm2onnx import Tm2OnnxError

    name = section.__name__.removesuffix("_section")
    needs_model = section in (runtime_section,)
    if needs_model and bench.model is None:
        bench.rows.append(check(name, "skipped", "no exported model", False, "runs"))
        return
    try:
        section(bench)
    except Tm2OnnxError as err:
        message = str(err).splitlines()[0]
        bench.rows.append(check(name, "failed", message[:110] + "..." * (len(message) > 110),
                                False, "runs"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="fewer timed runs (3 exports, 5 latencies), a 4k-expr big graph: a smoke "
                             "run, not a result")
    args = parser.parse_args(argv)
    bench = setup(args.quick)
    print(f"{MODEL} 1x3x224x224, {bench.exprs} exprs; export median of {bench.export_runs} "
          f"after 1 warm-up; latencies median of {bench.latency_runs} after 2 warm-ups"
          + (" (--quick)" if args.quick else ""))
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"load average {load} on {os.cpu_count()} CPUs (a busy machine slows every timing)",
          flush=True)
    for section in SECTIONS:
        run_section(section, bench)
    print()
    print_table(bench.rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
