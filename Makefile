# Bootstraps a local .venv on first use; every target works on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "after needs Python >= 3.11; set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[whisper,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/after demo --out runs/demo

test: $(STAMP)
	$(BIN)/pytest

# The tests not marked slow, for contributors; CI runs them all (make test).
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy after

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
