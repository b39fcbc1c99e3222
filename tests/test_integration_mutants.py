"""Negative control in CI: a mutant only the harness can catch (wrong-index keeps
count == popcount and leaves nothing at free, so the kernel's own
KVM_PROVE_MMU checks stay silent) must FAIL the consistency check, naming the
page and the index, while the clean port passes. `make mutation-test` runs all
mutants in both shadow MMU modes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parent.parent


def test_wrong_index_mutant_is_caught_and_clean_port_passes(tmp_path):
    r = subprocess.run([sys.executable, "-m", "devtools.mutation", "--results", str(tmp_path / "mutation"),
                        "--mutant", "wrong-index", "--modes", "shadow"], cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=3600)
    sys.stdout.write(r.stdout[-4000:])
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "clean                        clean" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("wrong-index"))
    # caught by the consistency check of dirty_log_test (the bitmap at the wrong index) and by
    # dirty_log_enable_test (write-protect-all walks the wrong bits: a lost write)
    assert "caught" in line and "shadow.dirty_log_test.dirty-log.consistency" in line, line
    assert "mutation test: PASS (1/1 mutants caught" in r.stdout
