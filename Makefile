# tm2onnx: `make demo` exports a bundled model and validates it; `make test` runs the suite.
# Both build .venv (Python 3.10, MegEngine 1.13 needs it) when it is missing; `make test` also
# builds .venv-onnx (Python 3.12, numpy 2, no MegEngine) and runs the ONNX-side tests there.
# .venv is the pinned run (onnx/onnxruntime 1.23.2, the newest for cp310); .venv-onnx takes
# the newest onnx/onnxruntime, so a release that breaks us shows up in `make test`.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL  ?= models/conv_bn_concat.tm
# The core package on a current Python: what ONNX users run (numpy 2, no MegEngine).
ONNX_PYTHON ?= 3.12
ONNX_VENV   ?= .venv-onnx
ONNX_PY     := $(ONNX_VENV)/bin/python
ONNX_STAMP  := $(ONNX_VENV)/.installed
PINNED      := "onnx==1.23.2" "onnxruntime==1.23.2"

.PHONY: demo test test-onnx test-toolchains venv onnx-venv models bench bench-peers \
        bench-toolchains gpu-check lint clean

venv: $(STAMP)

onnx-venv: $(ONNX_STAMP)

$(STAMP): pyproject.toml
	@PY310="$$(bash .ci/find-python310)" || exit 1; \
	  [ -x "$(PY)" ] || { echo "creating $(VENV) with $$PY310"; "$$PY310" -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[megengine,dev]" $(PINNED)
	@touch $(STAMP)

$(ONNX_STAMP): pyproject.toml
	@PYX="$$(bash .ci/find-python $(ONNX_PYTHON))" || exit 1; \
	  [ -x "$(ONNX_PY)" ] || { echo "creating $(ONNX_VENV) with $$PYX"; "$$PYX" -m venv $(ONNX_VENV); }
	$(ONNX_PY) -m pip install --quiet --upgrade pip
	$(ONNX_PY) -m pip install --quiet -e ".[megengine,dev]" "numpy>=2"
	$(ONNX_PY) -m pip install --quiet --upgrade onnx onnxruntime
	@touch $(ONNX_STAMP)

demo: $(STAMP)
	@mkdir -p out
	$(VENV)/bin/tm2onnx export $(MODEL) -o out/demo.onnx --passes deploy --validate
	$(VENV)/bin/tm2onnx where out/demo.onnx --op Concat

test: $(STAMP) $(ONNX_STAMP)
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-onnx

# Selected by marker, not skipped into green: pytest exits 5 (failing make) if none is selected.
test-onnx: $(ONNX_STAMP)
	$(ONNX_PY) -c "import importlib.util as u, numpy; assert numpy.__version__ >= '2' \
	  and not u.find_spec('megengine'), 'the ONNX-side venv must have numpy 2 and no MegEngine'"
	$(ONNX_PY) -c "import onnxruntime, onnx; print('ONNX side: onnxruntime', \
	  onnxruntime.__version__, 'onnx', onnx.__version__)"
	$(ONNX_PY) -m pytest -q -m "onnx_side and not slow and not toolchain"

# validate --runtime tvm|mnn|tflite|ncnn (and the OpenVINO tests again) in their own venv: not
# in CI (the wheels are large: tensorflow, torch for pnnx); `make bench-toolchains` prints the
# model x toolchain matrix. onnx2tf pins exact versions of everything (onnxsim 0.6.5 has no
# cp312 wheel): it goes in with --no-deps, its dependencies come from the `tflite` extra.
TC_VENV  ?= .venv-tc
TC_STAMP := $(TC_VENV)/.installed
$(TC_STAMP): pyproject.toml
	@PYX="$$(bash .ci/find-python $(ONNX_PYTHON))" || exit 1; \
	  [ -x "$(TC_VENV)/bin/python" ] || "$$PYX" -m venv $(TC_VENV)
	$(TC_VENV)/bin/python -m pip install --quiet -e ".[dev,openvino,tvm,mnn,tflite,ncnn]"
	$(TC_VENV)/bin/python -m pip install --quiet --no-deps "onnx2tf>=2.6" "onnxsim>=0.8"
	@touch $(TC_STAMP)

test-toolchains: $(TC_STAMP)
	$(TC_VENV)/bin/python -m pytest -q -m "toolchain or onnx_side" tests/runtime/test_toolchains.py \
	  tests/runtime/test_toolchains_other.py tests/runtime/test_toolchains_mobile.py

bench-toolchains: $(STAMP) $(TC_STAMP)
	$(PY) bench/toolchains.py --export bench/out/toolchains
	$(TC_VENV)/bin/python bench/toolchains.py bench/out/toolchains

# On a CUDA machine: the `gpu` tests and a TensorRT check (see bench/gpu_check.sh).
gpu-check: $(ONNX_STAMP)
	bash bench/gpu_check.sh

models: $(STAMP)
	$(PY) models/make_models.py

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/run.py
	$(PY) bench/transforms_bench.py
	$(PY) bench/localize_bench.py
	$(PY) bench/quant_bench.py

# deploy vs onnxsim/onnxslim on torchvision/timm/transformers files exported in the bench.
# Its own venv on Python 3.11 (the torch/torchvision pins below have cp311 wheels; torch goes
# in first and alone so the peers extra cannot pull another torch build beside it).
# PEERS_TORCH=/path/to/torch-cpu.whl avoids the CUDA wheel; PEERS_ARGS="--models swin_t".
PEERS_VENV   ?= .venv-peers
PEERS_PYTHON ?= 3.11
PEERS_TORCH  ?= torch==2.14.1
PEERS_VISION ?= torchvision==0.29.1
PEERS_ARGS   ?=
bench-peers:
	@PYX="$$(bash .ci/find-python $(PEERS_PYTHON))" || exit 1; \
	  [ -x "$(PEERS_VENV)/bin/python" ] || "$$PYX" -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet "$(PEERS_TORCH)" "$(PEERS_VISION)"
	$(PEERS_VENV)/bin/python -m pip install --quiet -e ".[peers]"
	$(PEERS_VENV)/bin/python bench/onnx_peers.py $(PEERS_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check tm2onnx transforms runtime tests models bench
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) $(ONNX_VENV) $(PEERS_VENV) $(TC_VENV) out build *.egg-info
