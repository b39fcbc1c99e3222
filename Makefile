# kvm-harness: boot-test and shell run the `kvm-harness` subcommands; bench, mutation-test, measure,
# measure-boot and steady run the development tools in devtools/ (never installed); test and lint check the
# project.
# ARGS passes options through, e.g. make boot-test ARGS="--modes shadow --only dirty-ring"
VENV ?= .venv
PY := $(VENV)/bin/python
KH := $(VENV)/bin/kvm-harness
ARGS ?=

.PHONY: setup boot-test shell ab test unit-test integration-test lint bench sandbox-cost clean-results mutation-test \
	measure measure-boot \
	steady

setup:
	./scripts/setup.sh

boot-test: $(KH)
	$(KH) boot-test $(ARGS)

shell: $(KH)
	$(KH) shell $(ARGS)

# Base (plain 6.12) against the series' kernel patches: dirty_log_perf_test -g, interleaved boots (docs/ab/).
ab: $(KH)
	$(KH) ab $(ARGS)

# The full suite: fast unit tests and the real boot test (real kernel, real QEMU). Plain `pytest` runs only
# the fast tier (pyproject.toml's addopts); the -m here, given last, selects both.
test: $(KH)
	$(PY) -m pytest -v -m "integration or not integration" $(ARGS)

unit-test: $(KH)
	$(PY) -m pytest -v -m "not integration" $(ARGS)

integration-test: $(KH)
	$(PY) -m pytest -v -m integration $(ARGS)

# Style and errors (ruff), types (mypy, strict over harness/): pyproject.toml configures both.
lint: $(KH)
	$(VENV)/bin/ruff check harness devtools tests
	$(VENV)/bin/mypy harness devtools

bench: $(KH)
	$(PY) -m devtools.bench $(ARGS)

# What the build sandbox (bubblewrap) costs a build: per sandboxed command, and a no-op make with --make DIR.
sandbox-cost: $(KH)
	$(PY) -m devtools.sandbox_cost $(ARGS)

$(KH):
	./scripts/setup.sh

clean-results:
	rm -rf results

# Negative controls: every kernel-patches/mutants/* must be reported inconsistent, the clean port not.
mutation-test: $(KH)
	$(PY) -m devtools.mutation $(ARGS)

# The boot-test figures of the README: cold (empty cache) then warm.
measure: $(KH)
	$(PY) -m devtools.measure --cold $(ARGS)

# QEMU start to SSH ready over 5 boots of the cached kernel.
measure-boot: $(KH)
	$(PY) -m devtools.measure --boots 5 $(ARGS)

# Does the default matrix pass every time here? N consecutive boot-tests, flaky and livelocked tests listed
# (docs/steady.md): make steady ARGS="--runs 10".
steady: $(KH)
	$(PY) -m devtools.steady $(ARGS)
