"""`kvm-harness walk` for real: a three-patch series on Debian's 6.12 (tests/data/walk: two harmless comments,
then a C syntax error), each prefix built in the same workspace and booted under real QEMU (boot checks
only, to keep it short). The walk must name patch 3, at the build, and the patched steps must cost far less
than cold builds (an incremental make with ccache: the figure is printed, never asserted on).
"""

import json
import shlex
from pathlib import Path

import pytest
from runs import REPO, kvm_harness

pytestmark = pytest.mark.integration

def _walk(work, *args):
    """kvm-harness walk with `args`, results under `work`: (the process, walk.json). The walk's directory holds
    walk.json; each step's run has its own directory beside it."""
    r = kvm_harness("walk", *args, "--results", str(work / "results"), cwd=work)
    docs = sorted((work / "results").glob("*/walk.json"))
    assert len(docs) == 1, r.stdout[-3000:] + r.stderr[-3000:]
    return r, json.loads(docs[0].read_text())


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    return _walk(tmp_path_factory.mktemp("walk"), "--series", str(REPO / "tests" / "data" / "walk"),
                 "--modes", "shadow", "--only", "none-of-the-tests")


def test_walk_names_the_first_bad_patch_and_where_it_went_wrong(walked):
    r, doc = walked
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert doc["first_bad"] == 3 and doc["first_bad_patch"].endswith("0003-TEST-KVM-x86-mmu-Break-the-build-kvm-harness-walk-fi.patch")
    steps = {s["k"]: s for s in doc["steps"]}
    assert sorted(steps) == [0, 1, 2, 3]
    assert all(steps[k]["exit_code"] == 0 and steps[k]["stage"] == "" for k in (0, 1, 2))
    assert steps[3]["exit_code"] == 6 and steps[3]["stage"] == "build"
    assert "arch/x86/kvm/mmu/mmu.c:" in steps[3]["reason"] and "error:" in steps[3]["reason"]
    assert "the first bad patch is 3 of 3" in r.stdout
    print(f"walk build times (s): {[steps[k]['build_s'] for k in sorted(steps)]}")


# --- the default series with a bookkeeping mutant appended (issue 22): ten patches, so bisected; the
# instrumentation arrives in five of them ------------------------------------------------------------------

PATCHES = REPO / "kernel-patches"


@pytest.fixture(scope="module")
def walked_mutant(tmp_path_factory):
    series = [a for d in ("fast-write-protect-6.12", "dirty-log-enable-selftest", "instrumentation",
                          "mutants/count-not-decremented") for a in ("--series", str(PATCHES / d))]
    return _walk(tmp_path_factory.mktemp("walk-mutant"), *series, "--modes", "shadow", "--only",
                 "dirty_log_enable_test")


def test_walk_names_the_mutant_at_the_consistency_stage(walked_mutant):
    r, doc = walked_mutant
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    assert len(doc["patches"]) == 10 and doc["first_bad"] == 10, doc
    assert "MUTANT" in doc["first_bad_patch"] and doc["could_also_be"] == []
    steps = {s["k"]: s for s in doc["steps"]}
    assert steps[10]["stage"] == "consistency" and steps[10]["outcome"] == "bad"
    assert "kvm.shadow.dirty_log_enable_test.consistency" in steps[10]["reason"]
    # every other step run was good: the prefixes without the instrumentation have no consistency case,
    # those with part of it are judged on what they have
    assert all(s["outcome"] == "good" for k, s in steps.items() if k != 10), steps
    assert len(steps) <= 10 // 2 + 3, "bisected, not walked"


def test_the_bad_steps_reproducer_rebuilds_it_and_fails_it_alone(walked_mutant, tmp_path):
    # the step's metadata.json names boot-test on its ten patches: run by hand, it is the same kernel (the
    # build key of the step, from the cache) and the same FAIL
    _, doc = walked_mutant
    step = {s["k"]: s for s in doc["steps"]}[10]
    meta = json.loads((Path(step["run_dir"]) / "metadata.json").read_text())
    argv = shlex.split(meta["reproducer"])
    assert argv[:2] == ["kvm-harness", "boot-test"] and argv.count("--series") == 10, argv
    assert "walk" not in argv
    r = kvm_harness(*argv[1:], "--results", str(tmp_path / "again"), cwd=tmp_path)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    from runs import load_run
    _, again, _ = load_run(tmp_path / "again")
    res = {x["path"]: x["status"] for x in again["results"]}
    assert res["kvm.shadow.dirty_log_enable_test.consistency"] == "FAIL", res
    again_meta = json.loads((tmp_path / "again" / "latest" / "metadata.json").read_text())
    assert again_meta["build"]["key"] == meta["build"]["key"]   # the same kernel, from the cache


def test_a_kernel_with_the_tracepoints_but_not_the_dump_skips_its_consistency_cases(tmp_path):
    # the walk's step 5 (instrumentation 0001 alone), as a boot-test: one patch mail given as --series
    first = sorted((PATCHES / "instrumentation").glob("0001-*.patch"))[0]
    r = kvm_harness("boot-test", "--series", str(PATCHES / "fast-write-protect-6.12"),
                    "--series", str(PATCHES / "dirty-log-enable-selftest"), "--series", str(first),
                    "--modes", "shadow", "--only", "dirty_log_enable_test", "--results", str(tmp_path / "r"),
                    cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    from runs import load_run
    _, doc, _ = load_run(tmp_path / "r")
    res = {x["path"]: x for x in doc["results"]}
    case = res["kvm.shadow.dirty_log_enable_test.consistency"]
    assert case["status"] == "SKIP" and case["reason"].startswith(
        "the kernel is only partly instrumented: the kvm_mmu_pw_* tracepoints but no pw_sptes dump"), case
    assert res["kvm.shadow.dirty_log_enable_test"]["status"] == "PASS"
