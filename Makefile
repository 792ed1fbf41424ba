# PowerPlane: `make run` starts the cockpit (live twin, energy management, web dashboard); `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: run test lint typecheck bench clean web-vendor

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEVSTAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(STAMP)

# The cockpit's chart library: uPlot from the npm registry, bundled into the package at install (no CDN at run
# time). Without npm the cockpit serves the full plotly.min.js of the plotly Python package (same charts, slower).
UPLOT := src/powerplane/web/vendor/uPlot.iife.min.js
UPLOT_VERSION := 1.6.32

$(UPLOT):
	@mkdir -p $(dir $@) build/npm
	@if command -v npm >/dev/null; then \
	  npm install --silent --no-audit --no-fund --prefix build/npm uplot@$(UPLOT_VERSION) \
	  && cp build/npm/node_modules/uplot/dist/uPlot.min.css build/npm/node_modules/uplot/LICENSE $(dir $@) \
	  && cp build/npm/node_modules/uplot/dist/uPlot.iife.min.js $@ \
	  || echo "npm install of uplot failed: the cockpit will draw its charts with the plotly package's plotly.min.js"; \
	else echo "npm not found: the cockpit will draw its charts with the plotly package's plotly.min.js"; fi

web-vendor: $(UPLOT)

run: $(STAMP) web-vendor
	$(BIN)/powerplane run --scenario texas

test: $(DEVSTAMP) web-vendor
	@# The browser tests drive Debian's chromium (no browser downloads): install it when missing and we are root.
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update && apt-get install -y chromium)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest -n 2 --durations=15 $(PYTEST_ARGS)

lint: $(DEVSTAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(DEVSTAMP)
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_twin.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache runs build/npm src/powerplane/web/vendor
