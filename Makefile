# Two commands do all the set-up: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint bench soak sandbox clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m dialer run

lint: $(STAMP)
	$(VENV)/bin/ruff check dialer tests bench
	$(VENV)/bin/mypy dialer

test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

# ingest, DNC import, dispatch, callbacks, pacing in turn (about 8 minutes; see bench/README.md)
bench: $(STAMP)
	$(PY) bench/ingest.py
	$(PY) bench/dnc.py
	$(PY) bench/dispatch.py
	$(PY) bench/callbacks.py
	$(PY) bench/pacing.py

# ten minutes of a steady stream (ingest + dispatch + callbacks); prints RSS, FDs, pool
# use and p99 callback latency every minute, then a verdict on the trend
soak: $(STAMP)
	$(PY) bench/soak.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
