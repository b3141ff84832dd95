"""Transform benchmark (a command, not a test): pipeline cost on synthetic Conv-BN-Relu-Add
ladders of 1k/10k/100k nodes against a bare onnx-graphsurgeon round trip, node counts on the
real models, and onnxruntime latency of ResNet-50 before/after the deploy pipeline."""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import Row, check, print_table, timed
from tm2onnx.transforms import run_pipeline

CHANNELS = 4
PEERS = ("onnxslim", "onnxsim", "onnxoptimizer")


def ladder(nodes: int, seed: int = 0, named: bool = True) -> onnx.ModelProto:
    """A chain of Conv→BatchNormalization→Relu→Add(residual) blocks, `nodes` nodes in all;
    `named=False` leaves every node name empty, as ONNX allows (new names then all share a
    base: the case that made fresh-name probing quadratic)."""
    rng = np.random.default_rng(seed)
    graph_nodes, inits = [], []
    x = "x"
    for block in range(nodes // 4):
        p = f"b{block}"
        inits += [numpy_helper.from_array(rng.normal(size=(CHANNELS, CHANNELS, 1, 1))
                                          .astype(np.float32) * 0.5, f"{p}.w")]
        for stat, value in (("scale", rng.uniform(0.5, 1.5, CHANNELS)),
                            ("bias", rng.normal(size=CHANNELS) * 0.1),
                            ("mean", rng.normal(size=CHANNELS) * 0.1),
                            ("var", rng.uniform(0.5, 1.5, CHANNELS))):
            inits.append(numpy_helper.from_array(value.astype(np.float32), f"{p}.{stat}"))
        graph_nodes += [
            helper.make_node("Conv", [x, f"{p}.w"], [f"{p}.conv"], name=f"{p}/conv"),
            helper.make_node("BatchNormalization", [f"{p}.conv", f"{p}.scale", f"{p}.bias",
                             f"{p}.mean", f"{p}.var"], [f"{p}.bn"], name=f"{p}/bn",
                             epsilon=1e-3),
            helper.make_node("Relu", [f"{p}.bn"], [f"{p}.relu"], name=f"{p}/relu"),
            helper.make_node("Add", [f"{p}.relu", x], [f"{p}.out"], name=f"{p}/add"),
        ]
        x = f"{p}.out"
    if not named:
        for node in graph_nodes:
            node.name = ""
    shape = [1, CHANNELS, 8, 8]
    graph = helper.make_graph(graph_nodes, "ladder",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def gs_round_trip(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = gs.import_onnx(model)
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def scaling_rows(sizes: list[int], runs: int, named: bool = True) -> list[Row]:
    rows, pipeline_s, bare_s = [], {}, {}
    kind = "" if named else "unnamed "
    for size in sizes:
        model = ladder(size, named=named)
        pipeline_s[size] = timed(lambda m=model: run_pipeline(m, ["deploy"]), runs=runs).median
        bare_s[size] = timed(lambda m=model: gs_round_trip(m), runs=runs).median
        after = run_pipeline(model, ["deploy"])[0]
        rows.append(Row("scaling", f"deploy on {size:,}-node {kind}ladder",
                        f"{pipeline_s[size]:.3f} s (gs round trip {bare_s[size]:.3f} s), "
                        f"nodes {size:,}→{len(after.graph.node):,}"))
    if 10_000 in pipeline_s:
        ratio = pipeline_s[10_000] / bare_s[10_000]
        rows.append(check("scaling", f"deploy / gs round trip at 10k {kind}", f"{ratio:.2f}×",
                          ratio <= 1.5, "≤ 1.5×"))
    if 10_000 in pipeline_s and 100_000 in pipeline_s:
        growth = pipeline_s[100_000] / pipeline_s[10_000]
        rows.append(check("scaling", f"100k / 10k time {kind}", f"{growth:.1f}×", growth <= 12,
                          "≤ 12× (linear)"))
    return rows


def model_rows(names: list[str]) -> list[Row]:
    import tm2onnx
    from models.make_models import build

    rows = []
    for name in names:
        traced, _ = build(name)
        model = tm2onnx.export(traced)
        start = time.perf_counter()
        lean, _ = run_pipeline(model, ["deploy"])
        seconds = time.perf_counter() - start
        rows.append(Row("models", f"{name}: nodes before→after deploy",
                        f"{len(model.graph.node)}→{len(lean.graph.node)} in {seconds:.2f} s"))
    return rows


def latency_rows(runs: int) -> list[Row]:
    import tm2onnx
    from models.make_models import build
    from tm2onnx.runtime import make_session, random_feeds

    traced, _ = build("resnet50")
    raw = tm2onnx.export(traced)
    lean, _ = run_pipeline(raw, ["deploy"])
    feeds = random_feeds(raw, seed=0)

    variants = {"raw_off": (raw, "disable"), "raw_ext": (raw, "extended"),
                "raw_all": (raw, "all"), "lean_off": (lean, "disable"), "lean_all": (lean, "all")}
    sessions = {key: make_session(model, opt_level=level, threads=2)
                for key, (model, level) in variants.items()}
    medians = interleaved_medians(sessions, feeds, runs)
    raw_off, raw_ext, raw_all = medians["raw_off"], medians["raw_ext"], medians["raw_all"]
    lean_off, lean_all = medians["lean_off"], medians["lean_all"]
    return [
        Row("resnet50", "raw export, ORT optimizations off", f"{raw_off * 1e3:.1f} ms"),
        Row("resnet50", "raw export, ORT EXTENDED", f"{raw_ext * 1e3:.1f} ms"),
        Row("resnet50", "raw export, ORT ALL", f"{raw_all * 1e3:.1f} ms"),
        check("resnet50", "deploy, ORT optimizations off vs raw EXTENDED",
              f"{lean_off * 1e3:.1f} ms ({lean_off / raw_ext:.3f}×)", lean_off <= raw_ext * 1.02,
              "≤ 1.02×"),
        check("resnet50", "deploy, ORT ALL vs raw ALL",
              f"{lean_all * 1e3:.1f} ms ({lean_all / raw_all:.3f}×)", lean_all <= raw_all * 1.02,
              "no slower (2% noise)"),
    ]


def peer_models() -> dict[str, onnx.ModelProto]:
    import tm2onnx
    from models.make_models import build

    return {name: tm2onnx.export(build(name)[0]) for name in ("const_scale", "resnet50")}


def interleaved_medians(sessions: dict, feeds: dict, runs: int) -> dict[str, float]:
    """Median latency per session, runs taken round-robin so that load from other processes on
    a shared machine hits every variant alike instead of whichever ran during a busy spell."""
    samples: dict[str, list[float]] = {key: [] for key in sessions}
    for key, session in sessions.items():  # warm-up
        session.run(None, feeds)
    for _ in range(runs):
        for key, session in sessions.items():
            start = time.perf_counter()
            session.run(None, feeds)
            samples[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in samples.items()}


def _run_peer(name: str, model: onnx.ModelProto) -> onnx.ModelProto:
    module = importlib.import_module(name)
    if name == "onnxslim":
        return module.slim(model)
    if name == "onnxsim":
        simplified, _ok = module.simplify(model)
        return simplified
    return module.optimize(model)


PEER_RUNNERS = {"tm2onnx deploy": lambda model: run_pipeline(model, ["deploy"])[0],
                **{name: (lambda model, n=name: _run_peer(n, model)) for name in PEERS}}


def peer_rows(models: dict[str, onnx.ModelProto], runs: int) -> list[Row]:
    """Each installed peer on the same exported models, side by side with our deploy pipeline:
    nodes after, Mul/Div left (the guide's conv*8/128), time, max abs diff, latency (ORT off)."""
    from tm2onnx.runtime import make_session, random_feeds, run_model

    installed = {k: v for k, v in PEER_RUNNERS.items()
                 if k not in PEERS or importlib.util.find_spec(k)}
    rows = [Row("peers", "not installed (pip install to compare)", name)
            for name in PEERS if name not in installed]
    for model_name, raw in models.items():
        feeds = random_feeds(raw, seed=0)
        reference = run_model(raw, feeds, opt_level="disable")
        for peer, runner in installed.items():
            start = time.perf_counter()
            try:
                out = runner(raw)
            except Exception as err:  # noqa: BLE001 - a peer's failure is a result to print
                rows.append(Row("peers", f"{model_name}: {peer}", f"failed: {err}"[:80]))
                continue
            seconds = time.perf_counter() - start
            got = run_model(out, feeds, opt_level="disable")
            diff = max(float(np.abs(got[k] - v).max()) for k, v in reference.items())
            session = make_session(out, opt_level="disable", threads=2)
            latency = timed(lambda s=session, f=feeds: s.run(None, f), runs=runs,
                            warmup=1).median
            mul_div = sum(n.op_type in ("Mul", "Div") for n in out.graph.node)
            rows.append(Row("peers", f"{model_name}: {peer}",
                            f"nodes {len(raw.graph.node)}→{len(out.graph.node)}, Mul/Div left "
                            f"{mul_div}, {seconds:.2f} s, max diff {diff:.1e}, "
                            f"{latency * 1e3:.2f} ms (ORT off)"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1k/10k only, fewer runs")
    parser.add_argument("--scaling-only", action="store_true",
                        help="only the ladder scaling rows (named and unnamed nodes)")
    args = parser.parse_args(argv)
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    runs = 1 if args.quick else 3
    from tm2onnx._quiet import quiet_megengine

    rows = scaling_rows(sizes, runs) + scaling_rows(sizes, runs, named=False)
    if args.scaling_only:
        print_table(rows)
        return 0
    with quiet_megengine():
        rows += model_rows(["resnet18", "resnet50", "mobilenet_v2", "shufflenet_v2",
                            "transformer_block"])
        rows += latency_rows(5 if args.quick else 20)
        rows += peer_rows(peer_models(), 3 if args.quick else 10)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
