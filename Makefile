# BioVL aligner. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help venv test test-fast test-cluster run bench bench-quick gpu-check lint format loadtest clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -c constraints.txt -e '.[service,dev]'
	@touch $(STAMP)

venv: $(STAMP) ## create/update the virtual environment (.venv)

test: $(STAMP) ## install what is needed, then run the whole test suite
	$(PY) scripts/ensure_test_deps.py
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900

test-fast: $(STAMP) ## the suite without the slow service/browser tests
	$(PY) -m pytest -q -m "not slow"

test-cluster: $(STAMP) ## a real two-node Ray cluster here: jobs + realign, second node killed mid-run
	BIOVL_CLUSTER_TEST=1 $(PY) -m pytest -q -p no:cacheprovider --timeout=600 -s -W ignore::DeprecationWarning tests/cluster

run: $(STAMP) ## start the service locally, submit a sample recording, print its alignment
	$(PY) -m services.run_local $(RUN_ARGS)

bench: $(STAMP) ## benchmarks: aligner, decoder, embedder, end to end (ratios side by side)
	$(PY) -m biovl_core.bench all

bench-quick: $(STAMP) ## the same benchmarks on smaller inputs
	$(PY) -m biovl_core.bench all --quick

gpu-check: ## on a CUDA machine: every GPU path vs its CPU twin, then the whole app (GPU_CHECK_ARGS=--quick)
	python3 scripts/gpu_check.py $(GPU_CHECK_ARGS)

lint: $(STAMP) ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

loadtest: $(STAMP) ## load test, 6 labs: today vs 1 vs "auto" jobs in flight per worker, jobs/min + CPU busy % + artifacts/loadtest.png (Prometheus)
	$(PY) loadtests/run.py --labs 6 $(LOADTEST_ARGS)

clean: ## remove caches and the local archive (keeps .venv)
	rm -rf .pytest_cache .ruff_cache .hypothesis var artifacts
