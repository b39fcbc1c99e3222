"""Running the harness as a user does, for the integration tests: `python -m harness ...` in a fresh
directory, and reading back the run it made."""

import json
import os
import subprocess
import sys
from pathlib import Path

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
