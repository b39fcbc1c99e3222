"""The artifacts directory of one run: never overwritten, `latest` points at the newest.

metadata.json is written when the run starts (with the reproducer command),
so even a run killed with SIGKILL leaves a record saying what it was.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import shlex
import sys
from pathlib import Path

from .. import __version__, cache, sandbox


def create(results_root: Path, label: str = "run") -> Path:
    results_root.mkdir(parents=True, exist_ok=True)
    sandbox.hide(results_root)   # a series' build steps never see the results
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        d = results_root / (f"{stamp}-{label}-{os.getpid()}" + ("" if n == 0 else f"-{n}"))
        try:
            d.mkdir()  # exclusive: two runs never share a directory
            return d
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {results_root}")


def point_latest(results_root: Path, run_dir: Path) -> None:
    """Atomically repoint results/latest (a relative symlink) at run_dir."""
    link = results_root / "latest"
    tmp = results_root / f".latest.tmp-{os.getpid()}"
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def reproducer(argv: list[str]) -> str:
    return shlex.join(["kvm-harness", *argv])


def start_metadata(run_dir: Path, argv: list[str], command: str) -> dict[str, object]:
    meta: dict[str, object] = {
        "run_id": run_dir.name,
        "command": command,
        "status": "running",
        "started": dt.datetime.now(dt.UTC).isoformat(),
        "reproducer": reproducer(argv),
        "cwd": os.getcwd(),
        "harness_version": __version__,
        "host": {"node": platform.node(), "kernel": platform.release(), "machine": platform.machine(),
                 "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "cache_root": str(cache.cache_root()),
    }
    cache.write_json(run_dir / "metadata.json", meta)
    return meta


def update_metadata(run_dir: Path, meta: dict[str, object], **fields: object) -> None:
    meta.update(fields)
    cache.write_json(run_dir / "metadata.json", meta)


class RunRecord:
    """One run's directory and its metadata.json, kept up to date as the run learns things, and its
    harness.log (every log record of the run, every command line at DEBUG)."""

    def __init__(self, results_root: Path, label: str, argv: list[str]) -> None:
        self.dir = create(results_root, label)
        point_latest(results_root, self.dir)
        self.meta = start_metadata(self.dir, argv, label)
        self._handler = logging.FileHandler(self.dir / "harness.log")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(self._handler)
        # Every record of the harness reaches harness.log, however the caller (the CLI, a script,
        # pytest) set up logging; the console handlers keep their own levels.
        logging.getLogger("kvm-harness").setLevel(logging.DEBUG)

    def update(self, **fields: object) -> None:
        update_metadata(self.dir, self.meta, **fields)

    def close(self) -> None:
        logging.getLogger().removeHandler(self._handler)
        self._handler.close()
