"""What a kernel tree's Kconfig says about a symbol: whether it exists, its type, its `depends on` lines and
their value with a given .config, for the messages of `kconfig.verify` (read only when a value is refused)."""

from __future__ import annotations

import os
import re
from pathlib import Path

_IDENT = re.compile(r"\b[A-Z][A-Z0-9_]+\b")


def dependency_values(deps: list[str], have: dict[str, str]) -> str:
    """`depends on A && (B || C)` with each symbol's value in the final .config: 'A=y, B=n, C=n'."""
    names = list(dict.fromkeys(n for d in deps for n in _IDENT.findall(d) if n not in ("y", "m", "n")))
    return ", ".join(f"{n}={have.get('CONFIG_' + n, 'n')}" for n in names)


def kconfig_depends(src: Path, symbol: str) -> list[str]:
    """The `depends on` lines of `symbol`'s Kconfig entry (best effort, for the message)."""
    name = symbol.removeprefix("CONFIG_")
    head = re.compile(rf"^\s*(menu)?config\s+{re.escape(name)}\s*$")
    deps: list[str] = []
    for kfile in kconfig_files(src):
        lines = kfile.read_text(errors="replace").splitlines()
        for i, line in enumerate(lines):
            if not head.match(line):
                continue
            for nxt in lines[i + 1:]:
                s = nxt.strip()
                if re.match(r"^(menu)?config\s|^(endmenu|endif|endchoice|choice|menu|if|source)\b", s):
                    break
                if s.startswith("depends on"):
                    deps.append(s.removeprefix("depends on").strip())
    return deps


_NOT_X86 = {"alpha", "arc", "arm", "arm64", "csky", "hexagon", "loongarch", "m68k", "microblaze", "mips", "nios2",
            "openrisc", "parisc", "powerpc", "riscv", "s390", "sh", "sparc", "um", "xtensa"}


def kconfig_files(src: Path) -> list[Path]:
    """Every Kconfig file of the tree that x86 can see (only read when a symbol is missing)."""
    out: list[Path] = []
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        if rel == Path("."):
            dirs[:] = [d for d in dirs if d not in (".git", "Documentation", "tools", "LICENSES")]
        elif rel == Path("arch"):
            dirs[:] = [d for d in dirs if d not in _NOT_X86]
        out.extend(Path(root) / f for f in files if f.startswith("Kconfig"))
    return out


def kconfig_type(src: Path, sym: str) -> str:
    """bool, tristate, int, hex or string, from the symbol's Kconfig entry ("" if not found)."""
    name = sym.removeprefix("CONFIG_")
    pat = re.compile(rf"^\s*(?:menu)?config\s+{re.escape(name)}\s*\n(?:\s*#.*\n|\s*\n)*\s*"
                     r"(bool|tristate|int|hex|string|def_bool|def_tristate)\b", re.M)
    for k in kconfig_files(src):
        m = pat.search(k.read_text(errors="replace"))
        if m:
            return m[1].removeprefix("def_")
    return ""


_DEP_TOKEN = re.compile(r"\s*(&&|\|\||!=|=|!|\(|\)|[A-Za-z0-9_]+|\"[^\"]*\")")
_TRI = {"n": 0, "m": 1, "y": 2}


def eval_dependency(expr: str, have: dict[str, str]) -> str:
    """A Kconfig `depends on` expression's value ('y', 'm' or 'n') with the symbols' values in `have`
    (Documentation/kbuild/kconfig-language.rst, "Menu dependencies": && is min, || max, ! is 2-x, = and !=
    compare values). An expression this cannot read is taken as met ('y'): the message then shows it."""
    toks = [t for t in _DEP_TOKEN.findall(expr)]
    pos = 0

    def value(tok: str) -> str:
        if tok in _TRI and not tok.isupper():
            return tok
        return have.get("CONFIG_" + tok, "n").strip('"')

    def primary() -> int | str:
        nonlocal pos
        tok = toks[pos]
        pos += 1
        if tok == "!":
            return 2 - tri(primary())
        if tok == "(":
            v = tri(disj())
            pos += 1  # ")"
            return v
        left = tok.strip('"')
        if pos < len(toks) and toks[pos] in ("=", "!="):
            op = toks[pos]
            right = toks[pos + 1].strip('"')
            pos += 2
            equal = value(left) == value(right)
            return 2 if equal == (op == "=") else 0
        return value(left)

    def tri(v: int | str) -> int:
        return v if isinstance(v, int) else _TRI.get(v, 0)

    def conj() -> int:
        nonlocal pos
        v = tri(primary())
        while pos < len(toks) and toks[pos] == "&&":
            pos += 1
            v = min(v, tri(primary()))
        return v

    def disj() -> int:
        nonlocal pos
        v = conj()
        while pos < len(toks) and toks[pos] == "||":
            pos += 1
            v = max(v, conj())
        return v

    try:
        result = disj()
    except (IndexError, KeyError):
        return "y"
    return "nmy"[result]


def symbol_exists(src: Path, sym: str) -> bool:
    name = sym.removeprefix("CONFIG_")
    pat = re.compile(rf"^\s*(menu)?config\s+{re.escape(name)}\s*$", re.M)
    return any(pat.search(k.read_text(errors="replace")) for k in kconfig_files(src))
