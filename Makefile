# kvm-harness: the make targets mirror `kvm-harness` subcommands.
# ARGS passes options through, e.g. make boot-test ARGS="--modes shadow --only dirty-ring"
VENV ?= .venv
PY := $(VENV)/bin/python
KH := $(VENV)/bin/kvm-harness
ARGS ?=

.PHONY: setup boot-test shell test unit-test integration-test bench clean-results mutation-test measure measure-boot

setup:
	./scripts/setup.sh

boot-test: $(KH)
	$(KH) boot-test $(ARGS)

shell: $(KH)
	$(KH) shell $(ARGS)

# The full suite: fast unit tests and the real boot test (real kernel, real QEMU).
test: $(KH)
	$(PY) -m pytest -v $(ARGS)

unit-test: $(KH)
	$(PY) -m pytest -v -m "not integration" $(ARGS)

integration-test: $(KH)
	$(PY) -m pytest -v -m integration $(ARGS)

bench: $(KH)
	$(PY) -m harness.bench $(ARGS)

$(KH):
	./scripts/setup.sh

clean-results:
	rm -rf results

# Negative controls: every kernel-patches/mutants/* must be reported inconsistent, the clean port not.
mutation-test: $(KH)
	$(PY) -m harness.mutation $(ARGS)

# The boot-test figures of the README: cold (empty cache) then warm.
measure: $(KH)
	$(PY) -m harness.measure --cold $(ARGS)

# QEMU start to SSH ready over 5 boots of the cached kernel.
measure-boot: $(KH)
	$(PY) -m harness.measure --boots 5 $(ARGS)
