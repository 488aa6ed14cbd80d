# The two commands of the README: `make run` (start the service) and `make test`.
# Each creates its own virtual environment from the pinned constraints on first use.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv run test lint typecheck unit proto proto-check perf-analyzer nginx browser bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt clients/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]' -e ./clients
	touch $(STAMP)

run: venv
	$(BIN)/gradserve serve

lint: venv
	$(BIN)/ruff check service tests clients bench examples
	$(BIN)/ruff format --check service tests clients bench examples

typecheck: venv
	$(BIN)/mypy service/gradserve clients/gradserve_client

perf-analyzer: venv
	bash scripts/install_perf_analyzer.sh

# nginx for the scale-out test (tests/e2e/test_scaleout.py); `make test` runs it too.
nginx:
	bash scripts/install_nginx.sh

# Debian's chromium for the lab page's browser test (tests/e2e/test_lab_page.py).
browser:
	bash scripts/install_browser.sh

# Everything CI runs: lint, types, then the test suite.
test: venv lint typecheck
	-bash scripts/install_perf_analyzer.sh
	-bash scripts/install_nginx.sh
	-bash scripts/install_browser.sh
	$(BIN)/pytest -q tests

bench: venv
	$(BIN)/gradserve bench

proto: venv
	bash scripts/gen_proto.sh

proto-check: venv
	bash scripts/gen_proto.sh --check

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
