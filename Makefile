# The commands the README names. Everything runs from a virtualenv in .venv (made by `make install`).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install system-deps ui demo test screenshots lint format bench mutation safeguards sandbox clean

# The plugin page's bundle, built from ui/ (Node >= 20.19 and npm; the versions are pinned in ui/package-lock.json).
UI_BUNDLE := include/optimove_netmera/ui/static/main.umd.cjs
UI_SOURCES := $(shell find ui/src ui/scripts -type f 2>/dev/null) ui/package.json ui/package-lock.json \
	ui/vite.config.ts ui/tsconfig.json

$(BIN)/airflow: requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	touch $(BIN)/airflow

$(UI_BUNDLE): $(UI_SOURCES)
	cd ui && npm ci --no-audit --no-fund --loglevel=error && npm run build

ui: $(UI_BUNDLE) ## the plugin page's bundle (npm ci && npm run build in ui/)

install: $(BIN)/airflow $(UI_BUNDLE) ## venv with pinned dependencies and the package (editable), the page's bundle

demo: install ## sandbox + Airflow standalone, then a finished user sync
	bash scripts/demo.sh

system-deps: ## Debian packages the tests use (docker-compose, chromium), installed if missing
	bash scripts/system-deps.sh

# `make test` runs the suite in TEST_WORKERS processes (pytest-xdist): one process keeps ~0.8 of a core busy (its tests
# wait on Airflow, HTTP and databases); on 2 cores two workers took 24 minutes where one took 38 (2026-12-08).
# `make test TEST_WORKERS=0` runs in one process.
TEST_WORKERS ?= 2

test: install system-deps ## the whole test suite (sandbox over HTTP, SQLite and PostgreSQL, real DAG runs, Celery)
	$(BIN)/pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

screenshots: install system-deps ## the browser tests (tests/ui); screenshots of each step (README "Browser tests")
	$(BIN)/pytest tests/ui

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install ## benchmarks (not part of `make test`); figures and the machine are printed
	$(BIN)/python tests/perf/bench_clients.py
	$(BIN)/python tests/perf/bench_sync.py
	$(BIN)/python tests/perf/bench_load.py
	$(BIN)/python tests/perf/bench_campaign.py
	$(BIN)/python tests/perf/bench_send.py
	$(BIN)/python tests/perf/bench_events.py

mutation: install ## mutation testing of the safeguard modules (mutmut; not part of `make test`); prints the score
	BIN=$(CURDIR)/$(BIN) bash scripts/mutation.sh

safeguards: install ## delete each promised safeguard once, run its test, fail if one survives (not part of `make test`)
	$(BIN)/python scripts/safeguards.py

sandbox: install ## serve the sandbox APIs on 127.0.0.1:8301 (Optimove) and :8302 (Netmera)
	$(BIN)/python -m optimove_netmera.sandbox

clean:
	rm -rf .airflow build *.egg-info include/*.egg-info ui/node_modules include/optimove_netmera/ui/static
