"""Localization overhead: ResNet-50 (1x3x224x224) `validate` against MegEngine with and without
`localize=True`, timed interleaved in one run; target: localizing costs at most 3x a plain
validate. Run: .venv/bin/python bench/localize_bench.py [--runs N]."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script

from bench.common import check, print_table
from tm2onnx._quiet import quiet_megengine

MODEL = "resnet50"
MAX_RATIO = 3.0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (3)")
    args = parser.parse_args(argv)
    with quiet_megengine():
        import megengine  # noqa: F401 - the banner goes before the timings

        import tm2onnx
        from models.make_models import build
        from tm2onnx.validate import against_megengine

        traced, _ = build(MODEL)
    model = tm2onnx.export(traced)
    variants = {"validate": lambda: against_megengine(model, traced, localize=False),
                "validate --localize": lambda: against_megengine(model, traced, localize=True)}
    for run in variants.values():  # warm-up: sessions, MegEngine kernels, page faults
        run()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for index in range(args.runs):
        names = list(variants) if index % 2 == 0 else list(reversed(variants))
        for name in names:
            start = time.perf_counter()
            report = variants[name]()
            samples[name].append(time.perf_counter() - start)
            assert report, f"{MODEL} should validate:\n{report}"
    load = " ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{MODEL} 1x3x224x224, {len(model.graph.node)} ONNX nodes; median of {args.runs} "
          f"interleaved rounds after 1 warm-up; load average {load} on {os.cpu_count()} CPUs")
    plain, localized = (statistics.median(samples[name]) for name in variants)
    ratio = localized / plain
    print_table([check("localize", "validate (s)", f"{plain:.2f}", True, "-"),
                 check("localize", "validate --localize (s)", f"{localized:.2f}", True, "-"),
                 check("localize", "overhead ratio", f"{ratio:.2f}x", ratio <= MAX_RATIO,
                       f"<= {MAX_RATIO:g}x")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
