"""Transform benchmark (a command, not a test): pipeline cost on synthetic Conv-BN-Relu-Add
ladders of 1k/10k/100k nodes against a bare onnx-graphsurgeon round trip, node counts on the
real models, and onnxruntime latency of ResNet-50 before/after the deploy pipeline."""

from __future__ import annotations

import argparse
import importlib.util
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


def ladder(nodes: int, seed: int = 0) -> onnx.ModelProto:
    """A chain of Conv→BatchNormalization→Relu→Add(residual) blocks, `nodes` nodes in all."""
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


def scaling_rows(sizes: list[int], runs: int) -> list[Row]:
    rows, pipeline_s, bare_s = [], {}, {}
    for size in sizes:
        model = ladder(size)
        pipeline_s[size] = timed(lambda m=model: run_pipeline(m, ["deploy"]), runs=runs).median
        bare_s[size] = timed(lambda m=model: gs_round_trip(m), runs=runs).median
        after = run_pipeline(model, ["deploy"])[0]
        rows.append(Row("scaling", f"deploy on {size:,}-node ladder",
                        f"{pipeline_s[size]:.3f} s (gs round trip {bare_s[size]:.3f} s), "
                        f"nodes {size:,}→{len(after.graph.node):,}"))
    if 10_000 in pipeline_s:
        ratio = pipeline_s[10_000] / bare_s[10_000]
        rows.append(check("scaling", "deploy / gs round trip at 10k", f"{ratio:.2f}×",
                          ratio <= 1.5, "≤ 1.5×"))
    if 10_000 in pipeline_s and 100_000 in pipeline_s:
        growth = pipeline_s[100_000] / pipeline_s[10_000]
        rows.append(check("scaling", "100k / 10k time", f"{growth:.1f}×", growth <= 12,
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

    def latency(model: onnx.ModelProto, level: str) -> float:
        session = make_session(model, opt_level=level, threads=2)
        return timed(lambda: session.run(None, feeds), runs=runs, warmup=2).median

    raw_ext, raw_all = latency(raw, "extended"), latency(raw, "all")
    lean_off, lean_all = latency(lean, "disable"), latency(lean, "all")
    raw_off = latency(raw, "disable")
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


def peer_rows() -> list[Row]:
    installed = [name for name in PEERS if importlib.util.find_spec(name)]
    missing = [name for name in PEERS if name not in installed]
    rows = []
    if missing:
        rows.append(Row("peers", "not installed (pip install to compare)", ", ".join(missing)))
    if installed:
        rows.append(Row("peers", "installed but not yet compared here", ", ".join(installed)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1k/10k only, fewer runs")
    args = parser.parse_args(argv)
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    runs = 1 if args.quick else 3
    from tm2onnx._quiet import quiet_megengine

    rows = scaling_rows(sizes, runs)
    with quiet_megengine():
        rows += model_rows(["resnet18", "resnet50", "mobilenet_v2", "shufflenet_v2",
                            "transformer_block"])
        rows += latency_rows(5 if args.quick else 20)
    rows += peer_rows()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
