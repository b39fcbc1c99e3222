"""Running the harness as a user does, for the integration tests: `python -m harness ...` in a fresh
directory, and reading back the run it made."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from harness import cache

REPO = Path(__file__).resolve().parent.parent


def kvm_harness(*args: str, cwd: Path, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "harness", *args]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def load_run(results: Path) -> tuple[dict, dict, Path]:
    """(metadata.json, harness-results.json, the run directory) of the latest run under `results`."""
    run = (results / "latest").resolve()
    return (json.loads((run / "metadata.json").read_text()),
            json.loads((run / "harness-results.json").read_text()), run)


def linux_6_1_tree() -> Path:
    """Debian's linux-source-6.1 as a git tree in the cache (scripts/tree-from-linux-source.sh; made once,
    then reused, with its workspace and build)."""
    tree = cache.cache_root() / "trees" / "linux-source-6.1"
    tree.parent.mkdir(parents=True, exist_ok=True)
    made = subprocess.run([str(REPO / "scripts" / "tree-from-linux-source.sh"), "6.1", str(tree)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert made.returncode == 0, f"the 6.1 tree (linux-source-6.1, installed by scripts/setup.sh): {made.stderr}"
    return tree


# A make the harness ran, as its logs record the command: `$ make ...`, or in the build sandbox
# `$ bwrap ... -- make ...` (harness/sandbox.py)
MAKE_LINE = re.compile(r"^\$ (?:bwrap .*? -- )?make ", re.M)
