# Chronicle: developer and CI entry points (GNU make).
#   make serve      run the archive on the embedded defaults in ./data
#   make test       lint, typecheck and the whole test suite (what CI runs)
#   make lint | typecheck | bench
#   make bench-scale  the scale suite (bench/scale.py); SCALE_ARGS="--quick" for a smoke run
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PACKAGES := schemas infra ingest projections api
# Per-test limit (seconds): a hung server or peer fails its test, not the whole run.
TEST_TIMEOUT ?= 300
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=

# Debian's DICOM peers the interop tests and the benchmark drive.
DEBIAN_TOOLS := dcmtk orthanc orthanc-dicomweb
TOOL_FILES := /usr/bin/storescu /usr/bin/findscu /usr/bin/echoscu /usr/bin/dcmodify \
	/usr/sbin/Orthanc /usr/share/orthanc/plugins/libOrthancDicomWeb.so

# Stamps: reinstall only when pyproject.toml changes (or the venv is new).
RUNTIME_STAMP := $(VENV)/.installed-runtime
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: serve test lint typecheck pytest bench bench-scale tools venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(RUNTIME_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(RUNTIME_STAMP) $@

venv: $(TEST_STAMP)

serve: $(RUNTIME_STAMP)
	$(BIN)/chronicle serve --data-dir ./data

# Install Debian's dcmtk and Orthanc when any is missing; never let tests skip for want of them.
tools:
	@missing=""; for f in $(TOOL_FILES); do [ -e "$$f" ] || missing="$$missing $$f"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != "0" ]; then \
		echo "make: missing$$missing" >&2; \
		echo "make: run as root, or install them: sudo apt-get install -y $(DEBIAN_TOOLS)" >&2; \
		exit 1; \
	fi; \
	echo "installing $(DEBIAN_TOOLS) (missing:$$missing)"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -q; \
	apt-get install -y -q --no-install-recommends $(DEBIAN_TOOLS); \
	for f in $(TOOL_FILES); do [ -e "$$f" ] || { echo "make: $$f still missing" >&2; exit 1; }; done

lint: $(TEST_STAMP)
	$(BIN)/ruff check .

typecheck: $(TEST_STAMP)
	$(BIN)/mypy --strict $(addprefix -p ,$(PACKAGES))

pytest: $(TEST_STAMP) tools
	TCP_NODELAY=1 $(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadscope \
		--timeout $(TEST_TIMEOUT) $(PYTEST_ARGS)

test: lint typecheck pytest

bench: $(TEST_STAMP) tools
	TCP_NODELAY=1 $(BIN)/python bench/ingest.py $(BENCH_ARGS)

# The benchmarks' own extra (matplotlib, psutil) on top of the test tools.
$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(RUNTIME_STAMP) $(TEST_STAMP) $@

# Never part of `make test`: 10k/100k/1M, Orthanc beside, a 10-minute soak (hours in all).
bench-scale: $(BENCH_STAMP) tools
	TCP_NODELAY=1 $(BIN)/python bench/scale.py $(SCALE_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
