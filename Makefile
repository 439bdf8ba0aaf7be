# The two Quickstart commands: `make demo` runs the main job, `make test` runs the test suite.
# Each creates the virtual environment it needs on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo test venv
venv: $(VENV)/.installed

# torch is pinned first so pip takes the CPU build (on these machines it lies on disk);
# an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

# The main job: compile the bundled W8A8 checkpoint to integer ONNX, verify it against the
# fake-quant model and compare its latency with FP32 ONNX Runtime and PyTorch FP32.
demo: venv
	$(BIN)/passion-export --ckpt tiny-w8a8 --target onnx --out build/tiny --verify

test: venv
	$(BIN)/python -m pytest -q tests
