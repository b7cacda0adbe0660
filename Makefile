# Two entry points: `make demo` (set up and run the main job) and `make test` (set up and run the tests).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
OUT    ?= out

.PHONY: demo test install dev clean results results-quick

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev,eval]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# Prune the embedded SmolLM2-135M to 50% with Wanda, printing perplexity before and after.
demo: install
	$(BIN)/prunellm prune smollm2-135m --solver wanda --sparsity 0.5 \
		--calib wikitext2 --nsamples 32 --seqlen 1024 \
		--eval-ppl wikitext2 --eval-dense --eval-seqlen 1024 --eval-max-windows 32 \
		--output $(OUT)/smollm2-135m-wanda-50 --overwrite

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: dev
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; exit 0; fi; exit $$rc

# The results page (docs/results.md): the smoke grid in minutes, or the whole grid (hours; resumable).
results-quick: dev
	$(BIN)/python bench/grid.py --quick

results: dev
	$(BIN)/python bench/grid.py --jobs 2

clean:
	rm -rf $(VENV) $(OUT)
