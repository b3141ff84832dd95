"""The model x toolchain matrix: each bundled model and a few fixtures, exported raw and after
`--passes deploy`, run on every toolchain installed here and compared with onnxruntime.

  .venv/bin/python bench/toolchains.py --export bench/out/toolchains   # MegEngine venv
  .venv-tc/bin/python bench/toolchains.py bench/out/toolchains         # the toolchains' venv

Each cell: worst max|diff| over the outputs and that divided by the output's max|ref|, or the
toolchain's one-line error. `make bench-toolchains` runs both steps."""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Fixtures beyond the committed models: name -> (make_models spec, input shapes).
FIXTURES = {"resnet18": ((1, 3, 64, 64),), "mobilenet_v2": ((1, 3, 64, 64),),
            "shufflenet_v2": ((1, 3, 64, 64),)}
PATTERNS = ("shared_upsample", "pafpn", "box_rescale")
# What broke TFLite/ncnn before the portable export: float64 promotion, F.repeat, slice writes.
PORTABLE = ("int_promotion", "repeat_upsample", "slice_write")
DETECTORS = ("swin_shift", "retina_post")   # window attention; in-graph box decode and NMS
QAT = {"qat_resnet18": ("resnet18", (1, 3, 32, 32))}  # QDQ: int8 kernels on each side
CELL_TIMEOUT = 600
VARIANTS = {"raw": [], "deploy": ["--passes", "deploy"]}


def export_all(out: Path, only: list[str] | None = None) -> None:
    """Every model as out/<name>.tm, out/<name>.<variant>.onnx and its feeds out/<name>.npz."""
    from tm2onnx.cli import main

    out.mkdir(parents=True, exist_ok=True)
    for name, (traced, inputs) in _build_all(only):
        tm_path = out / f"{name}.tm"
        tm_path.write_bytes(pickle.dumps(traced))
        np.savez(out / f"{name}.npz", *inputs)
        for variant, flags in VARIANTS.items():
            target = out / f"{name}.{variant}.onnx"
            code = main(["export", str(tm_path), "-o", str(target), "-q", *flags])
            print(f"exported {target.name}" if code == 0 else f"{target.name}: export failed")


def _build_all(only: list[str] | None):
    import megengine as mge
    import megengine.traced_module as tm

    from models import detectors, make_models, portable_patterns, quant, real_patterns

    builders = {spec.name: (lambda n=spec.name: make_models.build(n))
                for spec in make_models.SPECS.values() if not spec.large}
    builders.update({name: (lambda n=name, s=shapes: make_models.build(n, shapes=s))
                     for name, shapes in FIXTURES.items()})
    builders.update({name: (lambda n=name: real_patterns.build(n)) for name in PATTERNS})
    builders.update({name: (lambda n=name: portable_patterns.build(n)) for name in PORTABLE})

    def detector(name: str):
        net, shape = detectors.build(name)
        net.eval()
        x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        return tm.trace_module(net, mge.Tensor(x)), [x]

    builders.update({name: (lambda n=name: detector(n)) for name in DETECTORS})
    def qat(shape: tuple[int, ...]):
        # Calibrated at batch 4 (batch-1 statistics leave a NaN weight scale), traced at batch 1.
        net = quant.calibrated_qat(quant.QuantResNet18(num_classes=10, width=16),
                                   (4, *shape[1:]))
        traced = tm.trace_module(net, mge.Tensor(np.zeros(shape, np.float32)))
        traced.eval()
        return traced, [np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)]

    builders.update({name: (lambda s=shape: qat(s)) for name, (_, shape) in QAT.items()})
    for name, build in builders.items():
        if only is None or name in only:
            yield name, build()


def matrix(folder: Path, runtimes: list[str], only: list[str] | None = None) -> list:
    """One subprocess per cell: a toolchain that crashes (TVM segfaults on some graphs) costs
    its cell, not the table."""
    rows = []
    for path in sorted(folder.glob("*.onnx")):
        if only is not None and path.name.split(".")[0] not in only:
            continue
        cells = {}
        for runtime in runtimes:
            start = time.perf_counter()
            try:
                done = subprocess.run([sys.executable, __file__, str(folder), "--cell",
                                       path.name, runtime], capture_output=True, text=True,
                                      timeout=CELL_TIMEOUT, check=False)
                lines = done.stdout.strip().splitlines()
                cells[runtime] = (lines[-1] if done.returncode == 0 and lines
                                  else f"crash: exit {done.returncode}")
            except subprocess.TimeoutExpired:
                cells[runtime] = f"timeout: over {CELL_TIMEOUT} s"
            print(f"  {path.name} {runtime}: {cells[runtime]} "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
        rows.append((path.name.removesuffix(".onnx"), cells))
    return rows


def cell(path: Path, runtime: str) -> str:
    from tm2onnx.errors import Tm2OnnxError
    from tm2onnx.runtime.compare import compare
    from tm2onnx.runtime.session import run_model
    from tm2onnx.runtime.toolchains import run_toolchain

    model = onnx.load(str(path))
    feeds = _feeds(model, path.parent / f"{path.name.split('.')[0]}.npz")
    expected = run_model(model, feeds)
    try:
        got = run_toolchain(runtime, path, feeds)
    except Tm2OnnxError as err:
        return f"error: {_short(str(err))}"
    worst = max(compare(expected, got).diffs, key=lambda d: d.rel_error)
    return (f"{worst.max_abs:.1e} / {worst.rel_error:.1e}"
            + ("" if not worst.problem else f" ({worst.problem})"))


def _feeds(model: onnx.ModelProto, npz: Path) -> dict[str, np.ndarray]:
    from tm2onnx.runtime.inputs import random_feeds

    if not npz.exists():
        return random_feeds(model, seed=0)
    arrays = np.load(npz)
    return {i.name: arrays[f"arr_{n}"] for n, i in enumerate(model.graph.input)
            if f"arr_{n}" in arrays}


def _short(text: str) -> str:
    text = text.split(" — ")[0]
    return text if len(text) <= 90 else text[:87] + "..."


def print_table(rows: list[tuple[str, dict[str, str]]], runtimes: list[str]) -> None:
    print("| model | " + " | ".join(runtimes) + " |")
    print("|---|" + "---|" * len(runtimes))
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(cells.get(r, "-") for r in runtimes) + " |")


def main(argv: list[str] | None = None) -> int:
    from tm2onnx.runtime.toolchains import TOOLCHAINS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--export", action="store_true",
                        help="export the models into FOLDER (needs MegEngine)")
    parser.add_argument("--runtime", action="append", help="only these (default: installed)")
    parser.add_argument("--model", action="append", help="only these models (default: all)")
    parser.add_argument("--cell", nargs=2, metavar=("FILE.onnx", "RUNTIME"),
                        help=argparse.SUPPRESS)  # one cell, in its own process
    args = parser.parse_args(argv)
    if args.cell:
        print(cell(args.folder / args.cell[0], args.cell[1]))
        return 0
    if args.export:
        export_all(args.folder, args.model)
        return 0
    runtimes = args.runtime or [name for name, tc in TOOLCHAINS.items() if not tc.missing()]
    print(f"toolchains here: {', '.join(runtimes)}; cells: max|diff| / (max|diff| / max|ref|) "
          "vs onnxruntime, worst output")
    print_table(matrix(args.folder, runtimes, args.model), runtimes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
