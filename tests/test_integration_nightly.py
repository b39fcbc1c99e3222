"""`kvm-harness nightly` for real, two nights of one plan: Debian's linux-source-6.1 as a git tree, plain and
with the 6.12 port of the series (which does not apply to 6.1), real builds (the plain one shared with
test_integration_old_kernel through the cache) and real QEMU.

Night one: the plain tree PASSes, the series' combination is an apply ERROR naming the patch, and the
plain tree is still tested. Night two, nothing changed: every test the same, no regression (exit 0).
"""

import json
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest
from kcidb_io.schema import V4_3
from runs import REPO, kvm_harness, linux_6_1_tree

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    tree = linux_6_1_tree()
    work = tmp_path_factory.mktemp("nightly")
    (work / "plan.toml").write_text(f"""
modes = ["tdp_mmu"]
only = ["dirty_log_perf_test"]

[[tree]]
name = "debian-6.1"
path = "{tree}"

[[series]]
name = "fwp-6.12"
paths = ["{REPO}/kernel-patches/fast-write-protect-6.12"]
""")
    first = kvm_harness("nightly", "--plan", str(work / "plan.toml"), "--results", str(work / "results"), cwd=work)
    second = kvm_harness("nightly", "--plan", str(work / "plan.toml"), "--results", str(work / "results"), cwd=work)
    return first, second, work / "results"


def test_a_series_that_does_not_apply_is_its_combination_s_error_and_the_tree_still_runs(nights):
    first, _, results = nights
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    night = sorted((results / "nights").iterdir())[0]
    text = (night / "summary.md").read_text()
    assert "| debian-6.1/plain/default |" in text and "| pass | 0 |" in text
    assert "apply error: patch fast-write-protect-6.12/0001-" in text and "does not apply" in text
    doc = json.loads((night / "kcidb.json").read_text())
    V4_3.validate(doc)
    paths = {t["path"] for t in doc["tests"]}
    assert {"kvm.tdp_mmu.boot", "kvm.tdp_mmu.dirty_log_perf_test"} <= paths
    assert all(t["misc"]["nightly"]["change"] == "new" for t in doc["tests"])


def test_a_second_night_without_changes_has_no_regression(nights):
    _, second, results = nights
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    db = sqlite3.connect(results / "history.sqlite")
    assert db.execute("SELECT COUNT(*) FROM nights WHERE exit_code = 0").fetchone()[0] == 2
    runs = db.execute("SELECT combo, status, exit_code, commit_id FROM runs ORDER BY id").fetchall()
    assert [(c, s, e) for c, s, e, _ in runs] == [("debian-6.1/plain/default", "pass", 0),
                                                  ("debian-6.1/fwp-6.12/default", "error", 3)] * 2
    assert len({commit for *_, commit in runs}) == 1
    last = db.execute("SELECT MAX(id) FROM runs WHERE combo = 'debian-6.1/plain/default'").fetchone()[0]
    changes = dict(db.execute("SELECT path, change FROM tests WHERE run_id = ?", (last,)).fetchall())
    assert changes == {"kvm.tdp_mmu.boot": "same", "kvm.tdp_mmu.dirty_log_perf_test": "same"}


def test_the_history_page_renders_in_a_real_browser(nights):
    _, _, results = nights
    page = results / "index.html"
    assert page.exists()
    browser = "/usr/bin/chromium"   # Debian's package, installed by scripts/setup.sh
    assert Path(browser).exists(), "chromium is missing: run scripts/setup.sh"
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert '<table id="history">' in html and html.count('class="night"') == 2
    assert html.count('data-test="debian-6.1/plain/default:kvm.tdp_mmu.boot"') == 1
    assert html.count('class="cell PASS new"') == 2 and html.count('class="cell PASS same"') == 2
    assert html.count('<span class="mark">exit 0</span>') == 2   # both nights, the last one included
    assert "does not apply" in html    # the series' apply error, on its combination's cell
    # every cell links to its run directory, relative to the page, and the directory is there
    for href in re.findall(r'<td class="cell [^"]*"[^>]*><a href="([^"]+)"', html):
        assert not href.startswith("/") and (results / href).is_dir(), href
    shot = results / "index.png"
    r = subprocess.run([*flags, "--window-size=1280,600", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
