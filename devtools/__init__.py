"""Development tools of kvm-harness, run from the checkout (the Makefile's bench, mutation-test, measure and
steady targets) and never installed with the package: they reach into the repository (tests/data,
kernel-patches/mutants) and time or drive the harness rather than being part of a run. synth and synth_dat
generate the synthetic captures the tests and the benchmark use."""
