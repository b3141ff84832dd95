#!/usr/bin/env bash
# On a CUDA machine: the `gpu` tests and a TensorRT check, in one short run (`make gpu-check`).
# Never run yet: the session that wrote it had no GPU. Exits non-zero when CUDA or TensorRT is
# absent instead of skipping into green.
#   1. onnxruntime-gpu (tm2onnx[gpu]) in its own venv, GPU_VENV (.venv-gpu), with tensorrt
#      (the TensorRT provider loads libnvinfer from the `tensorrt` wheel or the system).
#   2. pytest -m gpu: CUDA provider vs CPU, --device auto, bench and localization on CUDA.
#   3. the exported models through onnxruntime's TensorrtExecutionProvider (f32) vs CPU, and
#      `trtexec --onnx` on each when trtexec is on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_VENV=${GPU_VENV:-.venv-gpu}
MODELS=${MODELS:-bench/out/toolchains}   # from `bench/toolchains.py --export` (MegEngine venv)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
if [ ! -x "$GPU_VENV/bin/python" ]; then
  "$(bash .ci/find-python 3.12)" -m venv "$GPU_VENV"
fi
"$GPU_VENV/bin/python" -m pip install --quiet -e ".[gpu,dev]" tensorrt
"$GPU_VENV/bin/python" -m pip uninstall --quiet -y onnxruntime || true  # one ORT package only
"$GPU_VENV/bin/python" - <<'PY'
import onnxruntime as ort
found = ort.get_available_providers()
print("onnxruntime", ort.__version__, found)
assert "CUDAExecutionProvider" in found, "no CUDAExecutionProvider: the gpu tests would skip"
PY
"$GPU_VENV/bin/python" -m pytest -q -m gpu -rs tests/runtime/test_gpu.py
"$GPU_VENV/bin/python" - "$MODELS" <<'PY'
"""Each exported model on TensorRT (through onnxruntime) vs onnxruntime CPU, f32."""
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from tm2onnx.runtime.inputs import random_feeds
import onnx

TRT = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
paths = sorted(Path(sys.argv[1]).glob("*.onnx"))
assert paths, f"no .onnx in {sys.argv[1]}: run bench/toolchains.py --export there first"
failed = 0
for path in paths:
    feeds = random_feeds(onnx.load(str(path)), seed=0)
    cpu = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    try:
        session = ort.InferenceSession(str(path), providers=TRT)
        got = session.run(None, feeds)
    except Exception as err:  # a TensorRT refusal: reported per model
        print(f"{path.name:<36} error: {' '.join(str(err).split())[:120]}")
        failed += 1
        continue
    worst = max(float(np.abs(g - c).max() / max(np.abs(c).max(), 1e-30))
                for g, c in zip(got, cpu))
    ran = session.get_providers()[0]
    ok = ran == "TensorrtExecutionProvider" and worst <= 1e-3
    failed += not ok
    print(f"{path.name:<36} {ran:<28} rel {worst:.2e}  {'ok' if ok else 'FAIL'}")
sys.exit(1 if failed else 0)
PY
if command -v trtexec >/dev/null; then
  for model in "$MODELS"/*.onnx; do
    trtexec --onnx="$model" --iterations=10 >/tmp/trtexec.log 2>&1 \
      && echo "trtexec ok: $model" || { echo "trtexec FAILED: $model"; tail -3 /tmp/trtexec.log; }
  done
else
  echo "trtexec not on PATH: the TensorRT provider check above is the TensorRT result"
fi
