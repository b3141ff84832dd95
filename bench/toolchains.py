"""The model x toolchain matrix: each bundled model and a few fixtures, exported raw and after
`--passes deploy`, run on every toolchain installed here and compared with onnxruntime.

  .venv/bin/python bench/toolchains.py --export bench/out/toolchains   # MegEngine venv
  .venv-tc/bin/python bench/toolchains.py bench/out/toolchains         # the toolchains' venv

Each cell: worst max|diff| over the outputs and that divided by the output's max|ref|, or the
toolchain's one-line error. `make bench-toolchains` runs both steps."""

from __future__ import annotations

import argparse
import pickle
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
VARIANTS = {"raw": [], "deploy": ["--passes", "deploy"]}


def export_all(out: Path) -> None:
    """Every model as out/<name>.tm, out/<name>.<variant>.onnx and its feeds out/<name>.npz."""
    from models import make_models, real_patterns
    from tm2onnx.cli import main

    out.mkdir(parents=True, exist_ok=True)
    built = {}
    for spec in (s for s in make_models.SPECS.values() if not s.large):
        built[spec.name] = make_models.build(spec.name)
    for name, shapes in FIXTURES.items():
        built[name] = make_models.build(name, shapes=shapes)
    for name in PATTERNS:
        built[name] = real_patterns.build(name)
    for name, (traced, inputs) in built.items():
        tm_path = out / f"{name}.tm"
        tm_path.write_bytes(pickle.dumps(traced))
        np.savez(out / f"{name}.npz", *inputs)
        for variant, flags in VARIANTS.items():
            target = out / f"{name}.{variant}.onnx"
            code = main(["export", str(tm_path), "-o", str(target), "-q", *flags])
            print(f"exported {target.name}" if code == 0 else f"{target.name}: export failed")


def matrix(folder: Path, runtimes: list[str]) -> list[tuple[str, dict[str, str]]]:
    from tm2onnx.errors import Tm2OnnxError
    from tm2onnx.runtime.compare import compare
    from tm2onnx.runtime.session import run_model
    from tm2onnx.runtime.toolchains import run_toolchain

    rows = []
    for path in sorted(folder.glob("*.onnx")):
        model = onnx.load(str(path))
        feeds = _feeds(model, folder / f"{path.name.split('.')[0]}.npz")
        expected = run_model(model, feeds)
        cells = {}
        for runtime in runtimes:
            start = time.perf_counter()
            try:
                got = run_toolchain(runtime, path, feeds)
            except Tm2OnnxError as err:
                cells[runtime] = f"error: {_short(str(err))}"
                continue
            diffs = compare(expected, got).diffs
            worst = max(diffs, key=lambda d: d.rel_error)
            cells[runtime] = (f"{worst.max_abs:.1e} / {worst.rel_error:.1e}"
                              + ("" if not worst.problem else f" ({worst.problem})"))
            print(f"  {path.name} {runtime}: {cells[runtime]} "
                  f"({time.perf_counter() - start:.1f} s)", file=sys.stderr)
        rows.append((path.name.removesuffix(".onnx"), cells))
    return rows


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
    args = parser.parse_args(argv)
    if args.export:
        export_all(args.folder)
        return 0
    runtimes = args.runtime or [name for name, tc in TOOLCHAINS.items() if not tc.missing()]
    print(f"toolchains here: {', '.join(runtimes)}; cells: max|diff| / (max|diff| / max|ref|) "
          "vs onnxruntime, worst output")
    print_table(matrix(args.folder, runtimes), runtimes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
