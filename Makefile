# make run DATA=<folder>   extract the folder, fit both heads, print both confusion matrices, audit
# make test                run the test suite (integration tests need FEATX_DATA_DIR, TFHUB_CACHE_DIR)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CACHE ?= cache/embeddings.h5
RUNS ?= runs

.PHONY: run test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project metadata changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
ifndef DATA
	$(error Missing DATA: run `make run DATA=path/to/images`, the folder that holds the class or split folders)
endif
	$(BIN)/python -m featx.extract "$(DATA)" --cache "$(CACHE)"
	$(BIN)/python -m featx.fit --head mlp --cache "$(CACHE)" --out "$(RUNS)/mlp"
	$(BIN)/python -m featx.fit --head raw --cache "$(CACHE)" --out "$(RUNS)/raw"
	$(BIN)/python -m featx.audit --cache "$(CACHE)" --out "$(RUNS)/audit"

test: install
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
