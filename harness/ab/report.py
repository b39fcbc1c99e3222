"""The A/B report: ab.md (the table, led by the ratios, and the scaling fits), ab.json (everything, raw
samples included) and one PNG per phase (matplotlib: both kernels against guest memory, per mode).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..perf import PHASE_TITLES, PHASES
from .compare import GIB, Point, Sample, Scaling, size_label

TIME_NOTE = ("Both kernels were built with the same config and without the harness's instrumentation "
             "(its tracepoints and debugfs dumps would time themselves).")


def _secs(x: float) -> str:
    return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"


def _summary(p: Point, kernel: str) -> str:
    s = p.base if kernel == "base" else p.patched
    return "-" if s is None else f"{_secs(s.median)} ({_secs(s.q1)}-{_secs(s.q3)}, n={s.n})"


def _ratio(p: Point) -> str:
    r = p.ratio
    return "-" if r is None else f"**{r.ratio:.3f}** [{r.low:.3f}, {r.high:.3f}]"


def table(pts: Sequence[Point]) -> str:
    """The markdown table: one row per point and phase, the ratio first."""
    rows = ["| mode | memory | vCPUs | phase | patched/base [95% CI] | significant | base median (IQR) "
            "| patched median (IQR) |",
            "|---|---|---|---|---|---|---|---|"]
    for p in pts:
        sig = "-" if p.ratio is None else ("yes" if p.ratio.significant else "no")
        rows.append(f"| {p.mode} | {size_label(p.size)} | {p.vcpus} | {PHASE_TITLES[p.phase]} | {_ratio(p)} | {sig} "
                    f"| {_summary(p, 'base')} | {_summary(p, 'patched')} |")
    return "\n".join(rows)


def scaling_table(sc: Sequence[Scaling]) -> str:
    """Seconds per GiB of guest memory, base and patched, for the scaling phases."""
    rows = ["| mode | vCPUs | phase | base s/GiB (r²) | patched s/GiB (r²) |", "|---|---|---|---|---|"]
    for s in sc:
        cells = [f"{f.slope:.4f} ± {f.stderr:.4f} ({f.r2:.2f})" if (f := s.fits.get(k)) else "-"
                 for k in ("base", "patched")]
        rows.append(f"| {s.mode} | {s.vcpus} | {PHASE_TITLES[s.phase]} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows)


def markdown(meta: dict[str, Any], pts: Sequence[Point], sc: Sequence[Scaling], failures: Sequence[str]) -> str:
    """ab.md: what was compared and where, the ratios, the scaling fits, the plots and what failed."""
    lines = [
        "# A/B: patched against base, dirty_log_perf_test -g",
        "",
        f"- base: {meta['base']['label']} (kernel {meta['base'].get('kernel_release', '?')})",
        f"- patched: {meta['patched']['label']} (kernel {meta['patched'].get('kernel_release', '?')})",
        f"- accelerator: {meta['accelerator']}; host CPU: {meta['host_cpu']}; {meta['qemu_version']}",
        f"- {meta['runs']} runs per kernel per point, base and patched boots interleaved (ABBA); "
        f"MMU modes {', '.join(meta['modes'])}; memory per vCPU {', '.join(meta['sizes'])}; "
        f"vCPUs {', '.join(map(str, meta['vcpus']))}",
        f"- {TIME_NOTE}",
    ]
    if meta["accelerator"].startswith("tcg"):
        lines.append("- Under TCG the guest's CPU is emulated: absolute times say little about hardware; read "
                     "the ratios, which both kernels met under the same emulation.")
    lines += ["", "A ratio is significant only where its 95% bootstrap interval excludes 1 "
              "(harness/ab/stats.py).", "", table(pts), "",
              "## Scaling with guest memory", "",
              "The series makes enabling dirty logging O(1) and moves the write protection into the first "
              "dirty iteration's faults: least-squares slopes against guest memory (all samples).", "",
              scaling_table(sc), ""]
    lines += [f"![{PHASE_TITLES[ph]}]({ph}.png)" for ph in PHASES if any(p.phase == ph for p in pts)]
    if failures:
        lines += ["", "## Runs without figures", ""] + [f"- {f}" for f in failures]
    return "\n".join(lines) + "\n"


def plot(pts: Sequence[Point], phase: str, path: Path) -> None:
    """One small PNG: the phase's median against guest memory (GiB, all vCPUs) with its interquartile
    range as error bars, base and patched side by side, one panel per mode and vCPU count."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    here = [p for p in pts if p.phase == phase]
    panels = sorted({(p.mode, p.vcpus) for p in here})
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.6), dpi=80, squeeze=False)
    for ax, (mode, vcpus) in zip(axes[0], panels, strict=True):
        for kernel, marker, shift in (("base", "o", -0.02), ("patched", "s", 0.02)):
            xs, ys, lo, hi = [], [], [], []
            for p in sorted((p for p in here if (p.mode, p.vcpus) == (mode, vcpus)), key=lambda p: p.size):
                s = p.base if kernel == "base" else p.patched
                if s is not None:
                    x = p.size * p.vcpus / GIB
                    xs.append(x * (1 + shift))
                    ys.append(s.median)
                    lo.append(s.median - s.q1)
                    hi.append(s.q3 - s.median)
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker=marker, capsize=3, label=kernel)
        ax.set_title(f"{mode}, {vcpus} vCPU", fontsize=9)
        ax.set_xlabel("guest memory (GiB)", fontsize=8)
        ax.set_ylabel("seconds", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)
    fig.suptitle(PHASE_TITLES[phase], fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(out: Path, meta: dict[str, Any], samples: Sequence[Sample], pts: Sequence[Point],
          sc: Sequence[Scaling], failures: Sequence[str]) -> str:
    """ab.json, ab.md and the PNGs into `out`; returns the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"meta": meta, "points": [p.to_dict() for p in pts], "scaling": [s.to_dict() for s in sc],
           "samples": [s.to_dict() for s in samples], "failures": list(failures)}
    (out / "ab.json").write_text(json.dumps(doc, indent=1) + "\n")
    for phase in PHASES:
        if any(p.phase == phase for p in pts):
            plot(pts, phase, out / f"{phase}.png")
    md = markdown(meta, pts, sc, failures)
    (out / "ab.md").write_text(md)
    return md
