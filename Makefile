# Two commands for a newcomer: `make demo` and `make test`. Each creates the
# virtual environment in .venv (torch from the registry; 2.13.0 is the CPU build)
# and builds the extension in place.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
NVCC   ?= $(shell command -v nvcc 2>/dev/null)
STAMP  := $(VENV)/.installed

.PHONY: venv build demo test test-fast check-cuda bench reproduction-docs clean

# [all]: the integrations (Lightning, transformers + accelerate, DeepSpeed, TensorBoard, W&B, pandas), so their
# tests run instead of skipping; torch is named again so pip keeps $(TORCH) while resolving them.
$(STAMP): pyproject.toml setup.py $(wildcard csrc/*/*.cpp csrc/*/*.h csrc/*/*.cu csrc/*/*.cuh)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q --no-build-isolation -e ".[test,all]" "$(TORCH)"
	touch $(STAMP)

venv: $(STAMP)

build: $(STAMP)
	$(PY) setup.py -q build_ext --inplace

demo: build
	$(PY) -m spectral_edge_fast.cli demo

# Compile-check the CUDA kernels (no GPU needed) whenever nvcc is present.
check-cuda:
ifneq ($(NVCC),)
	@for f in csrc/kernels/*.cu; do echo "nvcc -c $$f"; $(NVCC) -std=c++17 -O3 -Icsrc -c $$f -o /dev/null || exit 1; done
else
	@echo "nvcc not found: CUDA kernels not compile-checked"
endif

test: build check-cuda
	SEF_REQUIRE_BACKENDS=cpp,triton $(PY) -m pytest -q tests

# The default benchmark set (about 10 minutes on a quiet 2-core CPU) into benchmarks/results/*.json, then
# benchmarks/RESULTS.md and the README's tables from them. NumPy's BLAS on one thread: the analysis's matrices are tiny.
bench: build
	OPENBLAS_NUM_THREADS=1 $(PY) -m spectral_edge_fast.cli bench --out benchmarks/results
	$(PY) benchmarks/results_table.py

# docs/reproduction.md's tables, from the committed results of the default runs
reproduction-docs:
	$(PY) -c "from spectral_edge_fast.reproduce.common import build_docs; t = build_docs('docs/reproduction.md', 'docs/reproduction'); open('docs/reproduction.md', 'w').write(t)"

clean:
	rm -rf build $(VENV) spectral_edge_fast/_C*.so spectral_edge_fast/analysis/_secular*.so spectral_edge_fast/analysis/_slide_terms*.so *.egg-info
