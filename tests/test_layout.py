"""The package's shape, held: modules use each other's public names only, stay small, import no cycle,
and the checker's parsers do no I/O (the library issue's must-show, kept true by CI)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "harness"
MAX_MODULE_LINES = 350
# The checker's modules that are pure over text and values; files.py is the one that reads files.
PURE_CHECKS = ("parsers.debugfs", "parsers.dumpcols", "parsers.trace", "parsers.tracefile", "parsers.ringbuf",
               "parsers.tracedat", "reference.consistency", "reference.findings", "reference.replay",
               "reference.wpreplay", "reference.pagestate", "fast.columnar", "fast.wpcols", "spte")
PURE_GUESTCHECK = ("health", "livelock", "sysrq")
IO_MODULES = {"os", "subprocess", "shutil", "tempfile", "gzip", "lzma", "harness.proc"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def harness_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name) of every import of a harness module (name None for `import x`)."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                found.append((node.lineno, base, a.name))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, None) for a in node.names]
    return [f for f in found if f[1] == "harness" or f[1].startswith("harness.")]


def private_uses(path: Path) -> list[str]:
    """`from harness.x import _y`, and `x._y` where x names an imported harness module."""
    bad, modules = [], set()
    for line, mod, name in harness_imports(path):
        if name is not None and name.startswith("_") and not name.startswith("__"):
            bad.append(f"{path.name}:{line}: imports {mod}.{name}")
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.names:
            modules |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            modules |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith("harness")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            bad.append(f"{path.name}:{node.lineno}: uses {node.value.id}.{node.attr}")
    return bad


def test_no_module_or_test_uses_another_modules_private_names():
    files = [*sorted(PACKAGE.rglob("*.py")), *sorted((REPO / "tests").glob("*.py")),
             *sorted((REPO / "devtools").glob("*.py"))]
    bad = [b for f in files for b in private_uses(f)]
    assert bad == []


def test_every_module_is_under_the_size_a_reader_takes_in():
    sizes = {module_name(p): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {m: n for m, n in sizes.items() if n >= MAX_MODULE_LINES} == {}


def test_the_package_imports_no_cycle():
    graph: dict[str, set[str]] = {}
    for p in PACKAGE.rglob("*.py"):
        me = module_name(p)
        deps = set()
        for _, mod, name in harness_imports(p):
            full = f"{mod}.{name}" if name else mod
            target = full if (REPO / Path(*full.split("."))).with_suffix(".py").exists() else mod
            if target != me and target != "harness":
                deps.add(target)
        graph[me] = deps
    seen: dict[str, int] = {}   # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for d in sorted(graph.get(m, ())):
            if seen.get(d) == 1:
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in seen:
                visit(d, path + [d])
        seen[m] = 2
    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])
    assert cycles == []


def test_the_checkers_parsers_and_verdicts_do_no_io():
    for pkg, name in [*(("checks", n) for n in PURE_CHECKS), *(("guestcheck", n) for n in PURE_GUESTCHECK)]:
        tree = ast.parse((PACKAGE / pkg / Path(*name.split("."))).with_suffix(".py").read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        opens = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and n.func.id == "open"]
        assert not imported & IO_MODULES and opens == [], (name, imported & IO_MODULES, opens)


# The modules that decide or describe without doing I/O: the checker's, the verdicts, and the values a run is
# made of (requests, results, evidence, VM and config specs). Each imports only from this set, so that what it
# pulls in, transitively, is pure too (kunit_tool's parser, which imports nothing that runs a kernel).
PURE = {f"harness.checks.{m}" for m in PURE_CHECKS} | {f"harness.guestcheck.{m}" for m in PURE_GUESTCHECK} | {
    f"harness.{m}" for m in ("verdicts", "request", "results", "errors", "evidence", "vmspec", "configreq", "modes",
                             "workloads", "perf")}
IO_THIRD_PARTY = {"paramiko", "qemu", "socket", "select", "signal", "tarfile", "sqlite3", "urllib"}


def _module_of(mod: str, name: str | None) -> str:
    """The harness module an import names: `from harness.x import y` is module harness.x.y when that is a file."""
    full = f"{mod}.{name}" if name else mod
    return full if (REPO / Path(*full.split("."))).with_suffix(".py").exists() else mod


def test_the_pure_modules_import_only_pure_modules():
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    bad = []
    for me in sorted(PURE):
        path = files[me]
        for line, mod, name in harness_imports(path):
            dep = _module_of(mod, name)
            if dep != "harness" and dep not in PURE and not (dep.startswith(("harness.checks", "harness.guestcheck"))
                                                             and name and f"{dep}.{name}" in PURE):
                bad.append(f"{path.relative_to(REPO)}:{line}: imports {dep}, which is not pure")
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                     and not n.level}
        bad += [f"{path.relative_to(REPO)}: imports {m}" for m in sorted(imported & (IO_MODULES | IO_THIRD_PARTY))]
    assert bad == []


def test_the_installed_package_never_imports_the_development_tools():
    bad = [str(p.relative_to(REPO)) for p in PACKAGE.rglob("*.py")
           if re.search(r"^\s*(from|import) devtools\b", p.read_text(), re.M)]
    assert bad == []
