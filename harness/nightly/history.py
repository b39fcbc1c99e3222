"""The nightly history: one SQLite file under the results root (the standard library's sqlite3).

nights: one row per `kvm-harness nightly` (its plan, start, end, exit code).
runs: one row per combination per night: the combination's key, the source identity (tree, ref, commit,
    describe), the series' patch hashes, the build key, the accelerator, the inputs digest
    (changes.inputs_key), status, exit code, harness error and run directory.
tests: one row per test per run: status, reason, whether it passed on retry, its figures (JSON), and its
    change against the previous run of the same combination (changes.classify).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .changes import Observed

SCHEMA = """
CREATE TABLE IF NOT EXISTS nights (
    id INTEGER PRIMARY KEY, stamp TEXT NOT NULL, plan TEXT NOT NULL, started REAL NOT NULL,
    finished REAL, exit_code INTEGER, dir TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY, night_id INTEGER NOT NULL REFERENCES nights(id), combo TEXT NOT NULL,
    tree TEXT, ref TEXT, commit_id TEXT, describe TEXT, series TEXT, build_key TEXT, accel TEXT,
    inputs TEXT NOT NULL, status TEXT NOT NULL, exit_code INTEGER NOT NULL, error TEXT, run_dir TEXT);
CREATE INDEX IF NOT EXISTS runs_combo ON runs(combo, id);
CREATE TABLE IF NOT EXISTS tests (
    run_id INTEGER NOT NULL REFERENCES runs(id), path TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    retried_pass INTEGER NOT NULL DEFAULT 0, figures TEXT, change TEXT NOT NULL,
    PRIMARY KEY (run_id, path));
"""


@dataclass(frozen=True)
class PreviousRun:
    """The last recorded run of a combination: its inputs digest and {test path: status}."""

    run_id: int
    inputs: str
    statuses: dict[str, str]


class History:
    """The history database at `path` (created on first use). Each write is its own transaction, so an
    interrupted night keeps the combinations it finished."""

    def __init__(self, path: Path):
        self.path = path
        self.db = sqlite3.connect(path)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self.db:
            yield self.db

    def start_night(self, stamp: str, plan: Path, started: float, night_dir: Path) -> int:
        with self._tx() as db:
            cur = db.execute("INSERT INTO nights (stamp, plan, started, dir) VALUES (?, ?, ?, ?)",
                             (stamp, str(plan), started, str(night_dir)))
        return int(cur.lastrowid or 0)

    def finish_night(self, night_id: int, finished: float, exit_code: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE nights SET finished = ?, exit_code = ? WHERE id = ?", (finished, exit_code, night_id))

    def previous(self, combo: str) -> PreviousRun | None:
        """The last run of `combo` recorded before now, or None."""
        row = self.db.execute("SELECT id, inputs FROM runs WHERE combo = ? ORDER BY id DESC LIMIT 1",
                              (combo,)).fetchone()
        if row is None:
            return None
        tests = self.db.execute("SELECT path, status FROM tests WHERE run_id = ?", (row[0],)).fetchall()
        return PreviousRun(int(row[0]), str(row[1]), {str(p): str(s) for p, s in tests})

    def record_run(self, night_id: int, combo: str, meta: dict[str, Any], inputs: str,
                   tests: list[dict[str, Any]], changes: dict[str, str]) -> int:
        """One combination's run (`meta`: its metadata.json; `tests`: harness-results.json's results)."""
        source, build = meta.get("source") or {}, meta.get("build") or {}
        err = meta.get("error")
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (night_id, combo, tree, ref, commit_id, describe, series, build_key, accel, inputs,"
                " status, exit_code, error, run_dir) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (night_id, combo, source.get("tree"), source.get("ref"), source.get("commit"), source.get("describe"),
                 json.dumps(meta.get("series") or []), build.get("key"), (meta.get("accelerator") or {}).get("name"),
                 inputs, meta.get("status", "error"), int(meta.get("exit_code", 8)),
                 json.dumps(err) if err else None, meta.get("run_dir")))
            run_id = int(cur.lastrowid or 0)
            db.executemany(
                "INSERT INTO tests (run_id, path, status, reason, retried_pass, figures, change)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(run_id, t["path"], t["status"], t.get("reason", ""), int(Observed.of(t).retried_pass),
                  json.dumps(t.get("evidence", {}).get("figures")) if t.get("evidence", {}).get("figures") else None,
                  changes.get(t["path"], "same")) for t in tests])
        return run_id

    def grid(self, plan: Path, nights: int = 14) -> list[dict[str, Any]]:
        """The last `nights` nights of `plan`, oldest first, each with its runs' tests: the HTML page's rows."""
        rows = self.db.execute("SELECT id, stamp, dir, exit_code FROM nights WHERE plan = ? ORDER BY id DESC "
                               "LIMIT ?", (str(plan), nights)).fetchall()
        out = []
        for nid, stamp, ndir, code in reversed(rows):
            runs = self.db.execute("SELECT id, combo, describe, status, run_dir, error FROM runs WHERE night_id = ?",
                                   (nid,)).fetchall()
            tests = {}
            for rid, combo, describe, status, run_dir, error in runs:
                for path, st, change, reason in self.db.execute(
                        "SELECT path, status, change, reason FROM tests WHERE run_id = ?", (rid,)):
                    tests[f"{combo}:{path}"] = {"status": st, "change": change, "reason": reason,
                                                "run_dir": run_dir, "describe": describe}
                if not any(k.startswith(f"{combo}:") for k in tests):
                    # a run without tests (a series that did not apply, a build that failed): its error
                    why = json.loads(error)["message"] if error else ""
                    tests[f"{combo}:(run)"] = {"status": status.upper(), "change": "same", "reason": why,
                                               "run_dir": run_dir, "describe": describe}
            out.append({"night": stamp, "dir": ndir, "exit_code": code, "tests": tests})
        return out
