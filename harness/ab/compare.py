"""From raw A/B samples to the comparison: per point and phase, both kernels' spread and the ratio; per
mode, how enabling dirty logging (and the first dirty iteration, which now pays for it) grows with guest
memory; and the regression gate. Pure: samples in, plain values out (ab.json is their to_dict()).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .. import sizes
from ..errors import UsageError
from ..perf import PHASES
from .stats import Ratio, Slope, Summary, fit_slope, median_ratio, summarize

KERNELS = ("base", "patched")
# The series' claim is about scaling: what enabling costs against memory size, and where the cost went.
SCALING_PHASES = ("enable_dirty_logging", "dirty_memory_first")


@dataclass(frozen=True)
class Sample:
    """One dirty_log_perf_test run: which kernel, MMU mode, guest memory per vCPU (bytes), vCPUs, which
    repetition, and the phases it printed (perf.phases)."""

    kernel: str
    mode: str
    size: int
    vcpus: int
    run: int
    phases: dict[str, float]
    run_dir: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"kernel": self.kernel, "mode": self.mode, "size": self.size, "vcpus": self.vcpus,
                "run": self.run, "phases": self.phases, "run_dir": self.run_dir}


@dataclass(frozen=True)
class Point:
    """One phase at one (mode, size, vcpus): both kernels' summaries, and the ratio when each kernel has
    two samples or more."""

    mode: str
    size: int
    vcpus: int
    phase: str
    base: Summary | None
    patched: Summary | None
    ratio: Ratio | None

    def to_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "size": self.size, "vcpus": self.vcpus, "phase": self.phase,
                "base": self.base.to_dict() if self.base else None,
                "patched": self.patched.to_dict() if self.patched else None,
                "ratio": self.ratio.to_dict() if self.ratio else None}


@dataclass(frozen=True)
class Scaling:
    """A scaling phase against guest memory in one mode with `vcpus` vCPUs: each kernel's fitted line."""

    mode: str
    vcpus: int
    phase: str
    fits: dict[str, Slope] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"mode": self.mode, "vcpus": self.vcpus, "phase": self.phase,
                "fits": {k: s.to_dict() for k, s in self.fits.items()}}


def _values(samples: Iterable[Sample], kernel: str, phase: str) -> list[float]:
    return [s.phases[phase] for s in samples if s.kernel == kernel and phase in s.phases]


def points(samples: list[Sample]) -> list[Point]:
    """Every (mode, size, vcpus, phase) that some sample shows, in mode, vcpus, size and PHASES order."""
    keys = sorted({(s.mode, s.vcpus, s.size) for s in samples})
    out = []
    for mode, vcpus, size in keys:
        here = [s for s in samples if (s.mode, s.vcpus, s.size) == (mode, vcpus, size)]
        for phase in PHASES:
            b, p = _values(here, "base", phase), _values(here, "patched", phase)
            if not b and not p:
                continue
            ratio = median_ratio(b, p) if len(b) >= 2 and len(p) >= 2 and min(b) > 0 else None
            out.append(Point(mode, size, vcpus, phase, summarize(b) if b else None,
                             summarize(p) if p else None, ratio))
    return out


GIB = 1 << 30


def scaling(samples: list[Sample]) -> list[Scaling]:
    """SCALING_PHASES fitted against guest memory (GiB) per mode and vCPU count, for each kernel that has
    samples at two sizes or more."""
    out = []
    for mode, vcpus in sorted({(s.mode, s.vcpus) for s in samples}):
        for phase in SCALING_PHASES:
            sc = Scaling(mode, vcpus, phase)
            for kernel in KERNELS:
                pts = [(s.size * s.vcpus / GIB, s.phases[phase]) for s in samples
                       if (s.kernel, s.mode, s.vcpus) == (kernel, mode, vcpus) and phase in s.phases]
                if len({x for x, _ in pts}) >= 2:
                    sc.fits[kernel] = fit_slope([x for x, _ in pts], [y for _, y in pts])
            if sc.fits:
                out.append(sc)
    return out


def parse_max_ratio(specs: list[str]) -> dict[str, float]:
    """--max-ratio PHASE=R (repeatable) -> {phase: R}; a UsageError naming a bad one."""
    out = {}
    for spec in specs:
        phase, sep, value = spec.partition("=")
        try:
            limit = float(value)
        except ValueError:
            limit = -1.0
        if not sep or phase not in PHASES or limit <= 0:
            raise UsageError(f"--max-ratio wants PHASE=R with R > 0 and PHASE one of {', '.join(PHASES)}: {spec!r}")
        out[phase] = limit
    return out


def over_limit(pts: list[Point], limits: dict[str, float]) -> list[str]:
    """The gate: one line per point whose ratio is significantly above its phase's limit, i.e. whose whole
    confidence interval is above it. A ratio whose interval reaches the limit does not trip it."""
    return [f"{p.phase} at {p.mode}/{size_label(p.size)}/{p.vcpus} vCPU: patched/base {p.ratio.ratio:.3f} "
            f"[{p.ratio.low:.3f}, {p.ratio.high:.3f}] > {limits[p.phase]}"
            for p in pts if p.phase in limits and p.ratio is not None and p.ratio.low > limits[p.phase]]


def size_label(size: int) -> str:
    """Bytes as dirty_log_perf_test's -b takes them: 256M, 1G."""
    return f"{size // GIB}G" if size % GIB == 0 else f"{size >> 20}M"


def parse_size(text: str) -> int:
    """256M, 1G (dirty_log_perf_test's -b suffixes, as MiB and GiB) -> bytes; a UsageError otherwise."""
    wants = "a guest memory size is a positive number of M or G (like 256M, 1G)"
    size = sizes.parse(text, wants, units="MG")
    if size == 0:
        raise UsageError(f"{wants}: {text!r}")
    return size
