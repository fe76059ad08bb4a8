# The two commands of the README: `make demo` (install + whole pipeline on the embedded defaults)
# and `make test` (install + test suite). Both work on a fresh clone of a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# pytest selection for `make test`; `make test-all` adds the slow real-model runs.
TEST_ARGS ?= -m "not slow" -n auto --dist loadgroup --durations=15

.PHONY: install demo test test-all models clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: an unpinned torch drags in a multi-GB CUDA build on CPU machines.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,annotate]"
	if [ -x .ci/install-browser.sh ]; then .ci/install-browser.sh; fi
	touch $@

install: $(VENV)/.installed

models: install
	$(BIN)/rlhf models pull all

demo: models
	$(BIN)/rlhf chat "What is the capital of France?"
	$(BIN)/rlhf pipeline --preset demo

# Tests run on empty caches (.ci/with-fresh-caches), as on a fresh machine: a test that needs a pulled model
# pulls it, so one that forgot fails here as it would in CI, not only on a new clone.
test: install
	PYTHON=$(BIN)/python .ci/with-fresh-caches $(BIN)/python -m pytest $(TEST_ARGS)

test-all: install
	PYTHON=$(BIN)/python .ci/with-fresh-caches $(BIN)/python -m pytest -m ""

clean:
	rm -rf $(VENV) runs
