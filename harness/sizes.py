"""Sizes as the harness's options spell them (3G, 512M): one parser for --memory, ab's --sizes and a cache
budget, each with the units it accepts."""

from __future__ import annotations

import re

from .errors import UsageError

_SIZE = re.compile(r"^(\d+)([KMGT]?)$", re.IGNORECASE)
UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse(spec: str, wants: str, units: str = "KMGT", bare_mib: bool = False) -> int:
    """'3G' -> bytes. `units`: the suffixes accepted; a bare number is MiB if `bare_mib` (QEMU's -m), else
    refused. A UsageError "`wants`: 'spec'" otherwise."""
    m = _SIZE.match(spec.strip())
    unit = m.group(2).upper() if m else ""
    if not m or (unit and unit not in units) or (not unit and not bare_mib):
        raise UsageError(f"{wants}: {spec!r}")
    return int(m.group(1)) * (UNITS[unit] if unit else UNITS["M"])
