"""kvm-harness ab's decisions on synthetic samples with known ratios (harness/ab/stats.py, compare.py) and
its report files (report.py): no VM."""

import argparse
import json

import numpy as np
import pytest

from harness.ab import compare, report
from harness.ab.compare import GIB, Sample
from harness.ab.stats import fit_slope, median_ratio, summarize
from harness.cli import main
from harness.errors import UsageError


def _draw(seed, n, scale, noise=0.05):
    """n lognormal timings around `scale` with `noise` relative spread."""
    return list(scale * np.exp(np.random.default_rng(seed).normal(0, noise, n)))


def test_no_difference_is_not_called_significant():
    r = median_ratio(_draw(1, 5, 2.0), _draw(2, 5, 2.0))
    assert r.low < 1 < r.high and not r.significant
    # over many experiments with no difference, few are called significant: with five samples a side about
    # the interval's 5%; with three, the 10% of complete separations by chance (stats.py's docstring)
    for n, most in ((5, 10), (3, 25)):
        called = sum(median_ratio(_draw(10 + i, n, 1.0), _draw(1000 + i, n, 1.0)).significant for i in range(200))
        assert called <= most, f"{called} of 200 no-difference experiments called significant ({n} a side)"


def test_a_known_ratio_is_found_with_its_interval():
    slower = median_ratio(_draw(3, 5, 1.0), _draw(4, 5, 2.0))
    assert slower.significant and slower.low > 1 and slower.low < 2.0 < slower.high
    assert abs(slower.ratio - 2.0) < 0.15
    faster = median_ratio(_draw(5, 5, 10.0), _draw(6, 5, 0.5))   # the series' claim: 20x less
    assert faster.significant and faster.high < 0.06
    # three samples a side that overlap: cautious
    assert not median_ratio([1.0, 1.2, 1.1], [1.15, 1.3, 1.05]).significant


def test_summaries_and_degenerate_inputs():
    s = summarize([3.0, 1.0, 2.0, 4.0])
    assert (s.n, s.median, s.q1, s.q3) == (4, 2.5, 1.75, 3.25)
    assert median_ratio([1.0, 1.0], [2.0, 2.0]).to_dict() == {"ratio": 2.0, "low": 2.0, "high": 2.0,
                                                              "significant": True}
    with pytest.raises(ValueError):
        median_ratio([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        summarize([])


def test_slope_of_a_line():
    fit = fit_slope([0.125, 0.25, 0.5] * 2, [0.1 + 2 * x for x in [0.125, 0.25, 0.5]] * 2)
    assert abs(fit.slope - 2.0) < 1e-9 and abs(fit.intercept - 0.1) < 1e-9 and fit.r2 > 0.999
    with pytest.raises(ValueError):
        fit_slope([1.0, 1.0], [1.0, 2.0])


def _samples():
    """Base write-protects at the enable (linear in memory, 40 ms per GiB); patched in O(1) (1 ms) and pays
    in the first dirty iteration instead (here 1 s per GiB more: ratio 1.5). Three runs per kernel, 2% noise."""
    out = []
    rng = np.random.default_rng(7)
    for run in (1, 2, 3):
        for size in (128 << 20, 256 << 20, 512 << 20):
            gib = size / GIB
            for kernel in ("base", "patched"):
                enable = 0.04 * gib if kernel == "base" else 0.001
                first = 2.0 * gib + (1.0 * gib if kernel == "patched" else 0)
                out.append(Sample(kernel, "shadow", size, 1, run, {
                    "populate": 8.0 * gib * rng.normal(1, 0.02),
                    "enable_dirty_logging": enable * rng.normal(1, 0.02),
                    "dirty_memory_first": first * rng.normal(1, 0.02),
                    "dirty_memory_later": 2.0 * gib * rng.normal(1, 0.02)}, "runs/x"))
    return out


def test_points_scaling_and_the_gate():
    pts = compare.points(_samples())
    assert len(pts) == 3 * 4
    enable = [p for p in pts if p.phase == "enable_dirty_logging"]
    assert all(p.ratio.significant and p.ratio.high < 1 for p in enable)
    populate = [p for p in pts if p.phase == "populate"]
    assert populate[0].base.n == 3
    sc = {s.phase: s for s in compare.scaling(_samples())}
    base, patched = sc["enable_dirty_logging"].fits["base"], sc["enable_dirty_logging"].fits["patched"]
    assert abs(base.slope - 0.04) < 0.004 and abs(patched.slope) < 0.001
    # the gate trips only where the whole interval is above the limit
    limits = compare.parse_max_ratio(["enable_dirty_logging=0.5", "dirty_memory_first=1.5"])
    assert compare.over_limit(pts, limits) == []   # 1.5 is inside the first iteration's interval
    tripped = compare.over_limit(pts, {"dirty_memory_first": 1.2})
    assert len(tripped) == 3 and tripped[0].startswith("dirty_memory_first at shadow/128M/1 vCPU: patched/base 1.")
    with pytest.raises(UsageError):
        compare.parse_max_ratio(["enable=2"])
    with pytest.raises(UsageError):
        compare.parse_max_ratio(["populate=-1"])
    assert compare.parse_size("512M") == 512 << 20 and compare.size_label(GIB) == "1G"
    for bad in ("12K", "0M", "512", "1.5G"):
        with pytest.raises(UsageError, match="a guest memory size is a positive number of M or G"):
            compare.parse_size(bad)


def test_report_files(tmp_path):
    samples = _samples()
    pts, sc = compare.points(samples), compare.scaling(samples)
    meta = {"base": {"label": "plain linux-source-6.12.tar.xz", "kernel_release": "6.12.57"},
            "patched": {"label": "fast-write-protect-6.12", "kernel_release": "6.12.57"},
            "accelerator": "tcg -cpu max", "host_cpu": "AMD EPYC", "qemu_version": "QEMU emulator version 7.2",
            "runs": 3, "modes": ["shadow"], "sizes": ["128M", "256M", "512M"], "vcpus": [1]}
    md = report.write(tmp_path, meta, samples, pts, sc, ["patched run 2 kvm.shadow.x: ERROR timeout"])
    assert "| shadow | 128M | 1 | enabling dirty logging | **0." in md
    assert "absolute times say little" in md and "## Runs without figures" in md
    doc = json.loads((tmp_path / "ab.json").read_text())
    assert len(doc["samples"]) == 18 and doc["points"][0]["ratio"]["significant"] in (True, False)
    for phase in ("populate", "enable_dirty_logging", "dirty_memory_first", "dirty_memory_later"):
        assert (tmp_path / f"{phase}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "clear_dirty_log.png").exists()


def test_ab_usage_errors_are_exit_2_before_any_work(tmp_path):
    args = ["ab", "--results", str(tmp_path)]
    assert main([*args, "--runs", "2"]) == 2
    assert main([*args, "--iterations", "1"]) == 2
    assert main([*args, "--sizes", "256K"]) == 2
    assert main([*args, "--vcpus", "0"]) == 2
    assert main([*args, "--max-ratio", "enable_dirty_logging"]) == 2
    assert main([*args, "--series", "kernel-patches/fast-write-protect-6.12",
                 "--base-series", "kernel-patches/fast-write-protect-6.12"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_ab_builds_a_ref_of_a_tree_as_the_readme_says(tmp_path):
    from harness.ab import cli as ab_cli
    p = argparse.ArgumentParser()
    ab_cli.add_options(p)
    req = ab_cli.request_from(p.parse_args(["--tree", str(tmp_path), "--ref", "v6.12.1", "--results", str(tmp_path)]))
    assert req.base.tree_ref == req.patched.tree_ref == "v6.12.1"
    # --ref without --tree: the same usage error (exit 2) as boot-test's, before any work
    assert main(["ab", "--ref", "v6.12.1", "--results", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists() or list((tmp_path / "r").iterdir()) == []
