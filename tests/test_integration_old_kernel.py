"""A kernel of another age: Debian's linux-source-6.1 made a git tree (scripts/tree-from-linux-source.sh)
and run with `boot-test --tree --no-series` in every MMU mode, under real QEMU.

What it proves: the harness reads a 6.1 guest's KVM right (other log prefixes; kvm.tdp_mmu was only the
wish before 6.3), runs without the checks 6.1 cannot have (no CONFIG_KVM_PROVE_MMU), and reports a
selftest of the tree that does not build as that test's ERROR, not the run's. The tree lives in the
cache, so its workspace and build are reused from run to run. A cold build here is ~6.5 min.
"""

import json

import pytest
from runs import kvm_harness, linux_6_1_tree, load_run

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def old_kernel(tmp_path_factory):
    tree = linux_6_1_tree()
    work = tmp_path_factory.mktemp("old-kernel")
    r = kvm_harness("boot-test", "--tree", str(tree), "--no-series", "--results", str(work / "results"), cwd=work)
    meta, res, run = load_run(work / "results")
    return r, meta, res, run


def test_a_6_1_tree_boots_and_runs_in_every_mode(old_kernel):
    r, meta, res, run = old_kernel
    assert str(meta.get("kernel_release", "")).startswith("6.1."), meta.get("kernel_release")
    status = {t["path"]: t for t in res["results"]}
    for mode in ("shadow", "tdp_legacy", "tdp_mmu"):
        assert status[f"kvm.{mode}.boot"]["status"] == "PASS", status[f"kvm.{mode}.boot"]["reason"]
        perf = status[f"kvm.{mode}.dirty_log_perf_test"]
        assert perf["status"] == "PASS", perf["reason"]
        assert perf["evidence"]["figures"]["enable_dirty_logging"] > 0
        for log_mode in ("dirty-log", "clear-log", "dirty-ring"):
            t = status[f"kvm.{mode}.dirty_log_test.{log_mode}"]
            # Debian's 6.1.192 backported a dirty_log_test that uses TEST_ASSERT_EQ, which its
            # test_util.h lacks: the tree's breakage, reported as the test's ERROR with its cause.
            assert t["status"] == "PASS" or (t["status"] == "ERROR" and "did not build:" in t["reason"]), t["reason"]
    unbuilt = any(t["status"] == "ERROR" for t in res["results"])
    assert r.returncode == (8 if unbuilt else 0), r.stdout[-3000:]


def test_the_checks_6_1_cannot_have_are_named(old_kernel):
    _, meta, res, run = old_kernel
    kcidb = json.loads((run / "results.json").read_text())
    for where in (res["unavailable_checks"], meta["build"]["unavailable_checks"],
                  kcidb["builds"][0]["misc"]["unavailable_checks"]):
        assert any(c.startswith("CONFIG_KVM_PROVE_MMU:") and "no such symbol" in c for c in where), where
    # the guest said which KVM it has: the shadow mode ran the shadow MMU, whatever kvm.tdp_mmu read
    prints = meta["timings"]["fingerprint"]
    assert prints["shadow"]["vendor"] in ("kvm_amd", "kvm_intel")
    assert (prints["shadow"]["tdp"], prints["shadow"]["tdp_mmu"]) == ("N", "N")
    assert (prints["tdp_mmu"]["tdp"], prints["tdp_mmu"]["tdp_mmu"]) == ("Y", "Y")
