# tm2onnx: `make demo` exports a bundled model and validates it; `make test` runs the suite.
# Both build .venv (Python 3.10, MegEngine 1.13 needs it) when it is missing.

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
MODEL  ?= models/conv_bn_concat.tm

.PHONY: demo test venv models bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@PY310="$$(bash .ci/find-python310)" || exit 1; \
	  [ -x "$(PY)" ] || { echo "creating $(VENV) with $$PY310"; "$$PY310" -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[megengine,dev]"
	@touch $(STAMP)

demo: $(STAMP)
	@mkdir -p out
	$(VENV)/bin/tm2onnx export $(MODEL) -o out/demo.onnx --passes deploy --validate
	$(VENV)/bin/tm2onnx where out/demo.onnx --op Concat

test: $(STAMP)
	$(PY) -m pytest -q

models: $(STAMP)
	$(PY) models/make_models.py

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) bench/run.py
	$(PY) bench/transforms_bench.py

lint: $(STAMP)
	$(VENV)/bin/ruff check tm2onnx transforms runtime tests models bench

clean:
	rm -rf $(VENV) out build *.egg-info
