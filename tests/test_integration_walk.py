"""`kvm-harness walk` for real: a three-patch series on Debian's 6.12 (tests/data/walk: two harmless comments,
then a C syntax error), each prefix built in the same workspace and booted under real QEMU (boot checks
only, to keep it short). The walk must name patch 3, at the build, and the patched steps must cost far less
than cold builds (an incremental make with ccache: the figure is printed, never asserted on).
"""

import json

import pytest
from runs import REPO, kvm_harness

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def walked(tmp_path_factory):
    work = tmp_path_factory.mktemp("walk")
    r = kvm_harness("walk", "--series", str(REPO / "tests" / "data" / "walk"), "--modes", "shadow",
                    "--only", "none-of-the-tests", "--results", str(work / "results"), cwd=work)
    dirs = sorted((work / "results").glob("*-walk"))
    assert len(dirs) == 1, r.stdout[-3000:] + r.stderr[-3000:]
    return r, json.loads((dirs[0] / "walk.json").read_text())


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
