"""A series' Makefile is untrusted code (issue 21): the real harness builds the default series plus a patch
whose arch/x86/kvm/Makefile tries to reach out of its build, and nothing it tries lands on the host.

The patch's `$(shell ...)` lines run in every make of the kernel build (and its config targets): they write
a file on the host's /tmp, into the run's results root, into the user's home and into the harness's cache,
read the harness's own key, and list the network interfaces. In the sandbox (harness/sandbox.py) /tmp is private, the
home, the cache and the results are empty tmpfs mounts, and there is no network: the build passes, and the
host has none of the files. What the probes saw is written into the build's log, so the test also shows
what the build saw.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runs import kvm_harness

from harness import cache
from harness.series import load_default_list

pytestmark = pytest.mark.integration

# the last lines of 6.12's arch/x86/kvm/Makefile, the patch's context
TAIL = ["$(obj)/kvm-asm-offsets.h: $(obj)/kvm-asm-offsets.s FORCE",
        "\t$(call filechk,offsets,__KVM_ASM_OFFSETS_H__)", "", "targets += kvm-asm-offsets.s",
        "clean-files += kvm-asm-offsets.h"]


def probe_patch(out: Path, host: Path, results: Path) -> Path:
    keys = sorted((cache.cache_root() / "images").glob("*/id_ecdsa"))
    assert keys, "no guest image key in the cache to hide: the probe would prove nothing"
    probes = [
        f"$(shell touch {host / 'from-the-build'} 2>/dev/null)",
        f"$(shell touch {results / 'from-the-build'} 2>/dev/null)",
        f"$(shell touch {Path.home() / 'kvm-harness-sandbox-probe'} 2>/dev/null)",
        f"$(shell touch {cache.cache_root() / 'kvm-harness-sandbox-probe'} 2>/dev/null)",
        f"$(info kvm-harness-probe: key $(shell cat {keys[0]} >/dev/null 2>&1 && echo readable || echo hidden))",
        # /proc/net/dev is the reader's own network namespace (the host's /sys is bound read-only, its
        # /sys/class/net the host's)
        r"$(info kvm-harness-probe: interfaces $(shell sed -n 's/^ *\([a-z0-9]*\):.*/\1/p' /proc/net/dev))",
    ]
    body = "\n".join(f" {line}" for line in TAIL[-3:])
    added = "\n".join(f"+{p}" for p in probes)
    text = (f"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
            f"From: Probe <probe@example.invalid>\nSubject: [PATCH] TEST: reach out of the build\n\n"
            f"A series' Makefile trying to reach beyond its build (tests/test_integration_sandbox.py).\n---\n"
            f"diff --git a/arch/x86/kvm/Makefile b/arch/x86/kvm/Makefile\n"
            f"--- a/arch/x86/kvm/Makefile\n+++ b/arch/x86/kvm/Makefile\n"
            f"@@ -47,3 +47,{3 + len(probes)} @@\n{body}\n{added}\n-- \n2.39.5\n")
    p = out / "0001-TEST-reach-out-of-the-build.patch"
    p.write_text(text)
    return p


def test_a_series_makefile_reaches_nothing_beyond_its_build(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    results = tmp_path / "results"
    patch = probe_patch(tmp_path, host, results)
    series = [a for d in load_default_list() for a in ("--series", str(d))]
    r = kvm_harness("boot-test", *series, "--series", str(patch), "--modes", "shadow", "--only", "none-of-the-tests",
                    "--results", str(results), cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    leaked = [p for p in (host / "from-the-build", results / "from-the-build",
                          Path.home() / "kvm-harness-sandbox-probe", cache.cache_root() / "kvm-harness-sandbox-probe")
              if p.exists()]
    assert leaked == []
    log = (results / "latest" / "build.log").read_text()
    assert "kvm-harness-probe: key hidden" in log and "kvm-harness-probe: key readable" not in log
    seen = {line for line in log.splitlines() if line.startswith("kvm-harness-probe: interfaces")}
    assert seen == {"kvm-harness-probe: interfaces lo"}, seen   # a network namespace of its own: no way out
    meta = json.loads((results / "latest" / "metadata.json").read_text())
    assert meta["build"]["applied"][-1]["patch"] == patch.name
    # every make of the build and of its config steps ran in bubblewrap, as build.log records each command
    makes = [line for line in log.splitlines() if line.startswith("$ ") and " make " in f"{line} "]
    assert makes and all(line.startswith("$ bwrap ") and "--unshare-all" in line for line in makes), makes[:3]
