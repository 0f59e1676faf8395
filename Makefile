# evlink: `make run` serves the embedded default, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench install clean migrations

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/evlink migrate
	$(BIN)/evlink serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check evlink tests bench
	$(BIN)/ruff format --check evlink tests bench
	$(BIN)/mypy evlink

bench: $(STAMP)
	$(BIN)/python -m bench

# After a change to evlink/models: write the next migration (commit it).
migrations: $(STAMP)
	$(BIN)/tortoise makemigrations evlink

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
