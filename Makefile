# The two Quickstart commands: `make demo` runs the main job, `make test` runs the test suite.
# Each creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test venv lint
venv: $(VENV)/.installed

# torch is pinned first so pip takes the CPU build (on these machines it lies on disk);
# an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# The main job: compile the bundled W8A8 checkpoint for the CPU, verify it against the fake-quant
# model and compare its latency with its float baselines. CPU_TARGET is the faster of the two
# exact CPU targets, measured (README, "OpenVINO"): on this project's 2-core AVX2 machine without
# VNNI the openvino target (dequant mode, chosen there by its auto mode) ran the tiny UNet 1.25x,
# decoder 1.31x, encoder 1.09x faster than the onnx target (passion-bench --vs, alternating), both
# exact; on VNNI CPUs it picks int8 kernels (spec section 6: sd21 UNet 1199 ms vs the onnx
# target's 1363 ms). `make demo CPU_TARGET=onnx` builds the integer ONNX instead.
CPU_TARGET ?= openvino
demo: venv
	$(BIN)/passion-export --ckpt tiny-w8a8 --target $(CPU_TARGET) --out build/tiny --verify

test: venv
	$(BIN)/python -m pytest -q tests

# the layering contracts of .importlinter, on the installed package layout (tests/test_layering.py)
lint: venv
	$(BIN)/python -m pytest -q tests/test_layering.py

# -- the GPU check (benchmarks/gpu_check.py; issue 15) -----------------------------------------
# `make gpu-check GPU_OUT=DIR` on a GPU machine: the device image has no diffusers and no
# network, so the wheels of benchmarks/gpu_wheels.txt travel in .whl/ (`make gpu-wheels`, here)
# and are installed into /tmp/site first when diffusers is missing. Its Python is the image's
# python3 (no .venv there); here the .venv's when it exists. After the timings, the kernel and
# triton-target tests run on the GPU (CUDA tensors), within GPU_TESTS_S, into GPU_OUT/gpu_tests.*
# (a timed-out or failing run is said there; `make` goes on to report it). `make gpu-check-dry`:
# the CPU check of the script.
.PHONY: gpu-check gpu-check-dry gpu-wheels
GPU_OUT      ?= out/gpu-check
GPU_BUDGET_S ?= 360
GPU_TESTS_S  ?= 200
GPU_TESTS    := tests/kernels tests/targets/test_export_triton.py
GPU_PYTHON   ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
GPU_SITE     ?= /tmp/site
# the checkout laid out as installed (passion_deploy.layout): it runs uninstalled on the GPU machine,
# with PYTHONSAFEPATH so the working directory's passion_deploy/ (no export/ inside) is not found first
GPU_TREE     ?= /tmp/passion-tree
WHEEL_PLATFORMS := $(foreach n,manylinux_2_28 manylinux_2_27 manylinux_2_17 manylinux2014 manylinux1,--platform $(n)_x86_64)

gpu-wheels:
	$(PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		$(WHEEL_PLATFORMS) -d .whl -r benchmarks/gpu_wheels.txt

gpu-check:
	@$(GPU_PYTHON) -c "import diffusers" 2>/dev/null || $(GPU_PYTHON) -m pip install -q --no-index --no-deps \
		--no-compile --no-cache-dir --upgrade --target $(GPU_SITE) .whl/*.whl
	$(GPU_PYTHON) -m passion_deploy.layout $(GPU_TREE) >/dev/null
	PYTHONSAFEPATH=1 PYTHONPATH=$(GPU_SITE):$(GPU_TREE)$${PYTHONPATH:+:$$PYTHONPATH} PYTHONUNBUFFERED=1 \
		$(GPU_PYTHON) -m passion_deploy.benchmarks.gpu_check --out $(GPU_OUT) --budget-s $(GPU_BUDGET_S); \
	status=$$?; PYTHONSAFEPATH=1 PYTHONPATH=$(GPU_SITE):$(GPU_TREE)$${PYTHONPATH:+:$$PYTHONPATH} timeout $(GPU_TESTS_S) $(GPU_PYTHON) -m pytest \
		-q -rfE -p no:cacheprovider --junitxml=$(GPU_OUT)/gpu_tests.xml $(GPU_TESTS) > $(GPU_OUT)/gpu_tests.log 2>&1; \
	echo "gpu tests: exit $$? (124: over $(GPU_TESTS_S) s), $$(tail -1 $(GPU_OUT)/gpu_tests.log)"; exit $$status

gpu-check-dry: venv
	$(BIN)/python -m passion_deploy.benchmarks.gpu_check --dry-run --out $(GPU_OUT)-dry
