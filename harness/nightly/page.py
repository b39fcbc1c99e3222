"""The nightly's page: one static HTML file per plan (`<results>/index.html`), tests by nights, written with
Jinja2 from the history (history.History.grid). Opens from the results directory without a server: every
link is relative.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import jinja2

TEMPLATES = Path(__file__).parent / "templates"


def render(plan: Path, grid: list[dict[str, Any]], page_dir: Path) -> str:
    """The page of `plan` for `grid` (oldest night first); links are made relative to `page_dir`."""
    combos: dict[str, list[str]] = {}
    for night in grid:
        for key, cell in night["tests"].items():
            combo, _, test = key.partition(":")
            if test not in combos.setdefault(combo, []):
                combos[combo].append(test)
            run_dir = cell.get("run_dir") or ""
            cell["href"] = (os.path.relpath(run_dir, page_dir) + "/") if run_dir else "#"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template("history.html.j2").render(
        plan=str(plan), plan_name=plan.stem, nights=grid, rows=[(c, sorted(t)) for c, t in combos.items()],
        generated=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def write(path: Path, plan: Path, grid: list[dict[str, Any]]) -> Path:
    """Render into `path` (atomically); returns it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(render(plan, grid, path.parent))
    os.replace(tmp, path)
    return path
