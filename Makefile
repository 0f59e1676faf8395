# evlink: `make run` serves the embedded default, `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Two stamps: `make run` installs the runtime only; lint, test and the rest add the dev tools.
RUNTIME := $(VENV)/.installed-runtime
STAMP := $(VENV)/.installed
# The playground's GraphiQL bundles, fetched from npm at install time (never committed).
PLAYGROUND := evlink/playground/static/vendor/.complete

.PHONY: run test fuzz mutate lint bench install clean migrations playground screenshots ha-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): pyproject.toml $(PLAYGROUND) | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(RUNTIME) $(STAMP)

# npm ci of the pinned packages in assets/playground/, then a copy of their bundles.
$(PLAYGROUND): assets/playground/package.json assets/playground/package-lock.json evlink/playground/vendor.py | $(BIN)/python
	$(BIN)/python -m evlink.playground.vendor

playground: $(PLAYGROUND)

# Run the browser test and keep its picture as docs/playground.png.
screenshots: $(STAMP)
	@command -v chromium >/dev/null || { echo "make screenshots: chromium is not installed (apt-get install chromium): no picture taken"; exit 1; }
	EVLINK_UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest tests/playground/test_browser.py -k sqlite

install: $(STAMP)

# The runtime only; the playground's bundles when npm is there (evlink serve says how
# to get them otherwise: the API serves without them).
run: $(RUNTIME)
	@if [ ! -f $(PLAYGROUND) ] && command -v npm >/dev/null; then $(MAKE) --no-print-directory playground || echo "make run: the playground did not build; serving without it"; fi
	$(BIN)/evlink migrate
	$(BIN)/evlink serve

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The long run of the fuzz and property tests (CI runs them small in `make test`).
fuzz: $(STAMP)
	EVLINK_FUZZ_EXAMPLES=500 EVLINK_PROPERTY_EXAMPLES=200 $(BIN)/python -m pytest \
		tests/test_fuzz.py tests/resolvers/test_charging_properties.py -q $(PYTEST_ARGS)

# Mutation testing (mutmut, [tool.mutmut] in pyproject.toml): the pure rules, the read
# cache and the key checks against their fast tests only. Minutes: not in `make test` or
# CI. docs/testing.md lists every surviving mutant and why it is equivalent.
MUTANTS := 'evlink.resolvers.rules.*' 'evlink.cache.x_*_tag*' 'evlink.cache.x*ReadCache*' \
	'evlink.resolvers.auth.x_hash_key*' 'evlink.resolvers.auth.x__base62*' \
	'evlink.resolvers.auth.x__checksum*' 'evlink.resolvers.auth.x_new_key*' \
	'evlink.resolvers.auth.x_check_key_format*' 'evlink.resolvers.auth.x_key_from_authorization*' \
	'evlink.resolvers.auth.x_cached_user*'

mutate: $(STAMP)
	rm -rf mutants
	$(BIN)/mutmut run $(MUTANTS)
	$(BIN)/mutmut results

lint: $(STAMP)
	$(BIN)/ruff check evlink tests bench
	$(BIN)/ruff format --check evlink tests bench
	$(BIN)/mypy evlink

bench: $(STAMP)
	$(BIN)/python -m bench

# Home Assistant (tests/ha/requirements.txt) in its own virtualenv on Python 3.11, then
# the end-to-end test: a real Home Assistant with its MQTT integration on the test's broker.
HA_PYTHON ?= python3.11
HA_VENV := .venv-ha
HA_STAMP := $(HA_VENV)/.installed

$(HA_STAMP): tests/ha/requirements.txt
	$(HA_PYTHON) -m venv $(HA_VENV)
	$(HA_VENV)/bin/pip install --quiet --upgrade pip
	$(HA_VENV)/bin/pip install --quiet -r tests/ha/requirements.txt
	touch $(HA_STAMP)

ha-test: $(STAMP) $(HA_STAMP)
	EVLINK_TEST_HASS=$(CURDIR)/$(HA_VENV)/bin/hass $(BIN)/python -m pytest tests/ha $(PYTEST_ARGS)

# After a change to evlink/models: write the next migration (commit it).
migrations: $(STAMP)
	$(BIN)/tortoise makemigrations evlink

clean:
	rm -rf $(VENV) $(HA_VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis mutants
	rm -rf assets/playground/node_modules evlink/playground/static/vendor
