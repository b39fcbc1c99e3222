"""A nightly plan (TOML, read with the standard library's tomllib): kernel trees, series and config fragment
sets, and the MMU modes, whose every combination is run each night.

    modes = ["shadow", "tdp_legacy", "tdp_mmu"]     # optional, default: all three
    only = ["dirty_log_perf_test"]                   # optional: tests whose path contains one of these
    cache_budget = "40G"                             # optional: prune the cache to this after each night

    [[tree]]
    name = "kvm-next"                  # optional, default: the directory's name
    path = "/src/kvm"                  # a local git tree: nothing is fetched, the checkout never touched
    ref = "next"                       # optional, default HEAD: a branch, tag or commit

    [[series]]
    name = "fast-write-protect"
    paths = ["../kernel-patches/fast-write-protect-6.12"]   # directories or mbox files, applied in order

    [[config]]                         # optional, default: one set named "default" with no fragment
    name = "hung-240"
    fragments = ["hung.config"]

Relative paths are relative to the plan file. Each tree is also run without any series ("plain"), so a
series that stops applying to a tree's new head is that combination's apply ERROR while the tree itself
is still tested.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache_entries import parse_size
from ..errors import UsageError
from ..modes import DEFAULT_MODES, MODES

_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class Tree:
    name: str
    path: Path
    ref: str = "HEAD"


@dataclass(frozen=True)
class SeriesSet:
    name: str
    paths: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ConfigSet:
    name: str
    fragments: tuple[Path, ...] = ()


PLAIN = SeriesSet("plain")


@dataclass(frozen=True)
class Combination:
    """One tree at its ref, with one series set (or none) and one config set: a line of the history."""

    tree: Tree
    series: SeriesSet
    config: ConfigSet

    @property
    def key(self) -> str:
        """tree/series/config by name: what the history compares night to night."""
        return f"{self.tree.name}/{self.series.name}/{self.config.name}"


@dataclass
class Plan:
    path: Path
    trees: list[Tree]
    series: list[SeriesSet]
    configs: list[ConfigSet]
    modes: list[str] = field(default_factory=lambda: list(DEFAULT_MODES))
    only: tuple[str, ...] = ()
    cache_budget: str | None = None

    def combinations(self) -> list[Combination]:
        """Every tree x (plain, then each series) x config, in the plan's order."""
        return [Combination(t, s, c) for t in self.trees for s in [PLAIN, *self.series] for c in self.configs]


def _err(plan: Path, what: str) -> UsageError:
    return UsageError(f"nightly plan {plan}: {what}")


def _str_list(plan: Path, where: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _err(plan, f"{where} must be a list of strings")
    return list(value)


def _name(plan: Path, where: str, table: dict[str, Any], default: str, seen: set[str]) -> str:
    name = table.get("name", default)
    if not isinstance(name, str) or not _NAME.match(name):
        raise _err(plan, f"{where}: name {name!r} must be letters, digits, '.', '_' or '-'")
    if name in seen:
        raise _err(plan, f"{where}: the name {name!r} is used twice")
    seen.add(name)
    return name


def _known(plan: Path, where: str, table: dict[str, Any], keys: set[str]) -> None:
    if unknown := sorted(set(table) - keys):
        raise _err(plan, f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(keys))})")


def load(path: Path) -> Plan:
    """Read and check a plan; a UsageError naming the plan, the table and the problem otherwise (a TOML
    syntax error gives tomllib's line and column). Paths are checked to exist; what they hold is checked
    by each run (a tree that is not a git tree is that combination's usage error)."""
    try:
        doc = tomllib.loads(path.read_text())
    except OSError as e:
        raise UsageError(f"nightly plan unreadable: {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise _err(path, f"not TOML: {e}") from None
    base = path.resolve().parent
    _known(path, "top level", doc, {"modes", "only", "cache_budget", "tree", "series", "config"})

    def rel(p: str, where: str) -> Path:
        full = (base / p).resolve()
        if not full.exists():
            raise _err(path, f"{where}: {p} does not exist ({full})")
        return full

    trees: list[Tree] = []
    seen: set[str] = set()
    for i, t in enumerate(doc.get("tree", [])):
        where = f"[[tree]] #{i + 1}"
        _known(path, where, t, {"name", "path", "ref"})
        if not isinstance(t.get("path"), str):
            raise _err(path, f"{where}: needs path = \"/a/kernel/git/tree\"")
        p = rel(t["path"], where)
        ref = t.get("ref", "HEAD")
        if not isinstance(ref, str) or not ref:
            raise _err(path, f"{where}: ref must be a branch, tag or commit")
        trees.append(Tree(_name(path, where, t, p.name, seen), p, ref))
    if not trees:
        raise _err(path, "no [[tree]]: a nightly needs at least one kernel git tree")
    series, seen = [], {PLAIN.name}
    for i, s in enumerate(doc.get("series", [])):
        where = f"[[series]] #{i + 1}"
        _known(path, where, s, {"name", "paths"})
        paths = [rel(p, where) for p in _str_list(path, f"{where}: paths", s.get("paths"))]
        if not paths:
            raise _err(path, f"{where}: paths is empty")
        series.append(SeriesSet(_name(path, where, s, paths[0].name, seen), tuple(paths)))
    configs, seen = [], set()
    for i, c in enumerate(doc.get("config", [])):
        where = f"[[config]] #{i + 1}"
        _known(path, where, c, {"name", "fragments"})
        frags = [rel(p, where) for p in _str_list(path, f"{where}: fragments", c.get("fragments", []))]
        configs.append(ConfigSet(_name(path, where, c, "default", seen), tuple(frags)))
    modes = _str_list(path, "modes", doc.get("modes", list(DEFAULT_MODES)))
    for m in modes:
        if m not in MODES:
            raise _err(path, f"modes: unknown MMU mode {m!r} (of {', '.join(MODES)})")
    budget = doc.get("cache_budget")
    if budget is not None:
        if not isinstance(budget, str):
            raise _err(path, "cache_budget must be a size like \"40G\"")
        try:
            parse_size(budget)
        except UsageError as e:
            raise _err(path, f"cache_budget: {e}") from None
    return Plan(path.resolve(), trees, series, configs or [ConfigSet("default")], modes,
                tuple(_str_list(path, "only", doc.get("only", []))), budget)
