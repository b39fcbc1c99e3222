"""The reports of a run, one writer per format (ktap.py, junit.py, kcidb.py), all from the same
TestResults; and the run directory that holds them (run_dir.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import cache
from ..results import TestResult
from . import junit, kcidb, ktap


def write_reports(out: Path, results: list[TestResult], meta: dict[str, Any], build: dict[str, Any] | None,
                  status: str) -> None:
    """ktap.txt, junit.xml, results.json (a KCIDB v4.3 submission, nothing else), harness-results.json (the
    harness's own account: status, exit code, error, every result with its evidence) and console.log (every
    VM's console, concatenated) into the run directory `out`."""
    (out / "ktap.txt").write_text(ktap.render(results))
    junit.write(results, out / "junit.xml")
    timings = meta.get("timings") or {}
    env: dict[str, Any] = {"accelerator": meta.get("accelerator"), "qemu": meta.get("qemu_version"),
                           "fingerprint": timings.get("fingerprint")}
    env["summary"] = f"{env['accelerator']}; {env['qemu']}"
    doc = kcidb.render(out.name, results, meta.get("source") or {}, build, env, status)
    cache.write_json(out / "results.json", doc)
    cache.write_json(out / "harness-results.json", {"status": status, "exit_code": meta.get("exit_code"),
                                                    "error": meta.get("error"),
                                                    "unavailable_checks": (build or {}).get("unavailable_checks", []),
                                                    "results": [r.to_dict() for r in results]})
    consoles = sorted(out.glob("console-*.log"))
    with open(out / "console.log", "w") as f:
        for c in consoles:
            f.write(f"===== {c.name} =====\n{c.read_text(errors='replace')}\n")
