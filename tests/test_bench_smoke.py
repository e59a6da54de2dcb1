"""benchmarks/bench_engine.py --quick runs and prints every ratio line (no timing checks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("esper_lifetimes")
pytest.importorskip("numpy")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_engine.py"


def test_bench_quick_prints_the_ratio_lines(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for prefix in (
        "ratio (a-l) one call per launch, as the sanitizer is called, vs fastest torch ",
        "ratio (a) vs floor (d): ",
        "ratio (b) bulk throughput: ",
        "ratio (a) per-event cost, 100,000 vs 1,000 live storages: ",
        "      of which finding the storage: ",
    ):
        assert any(line.startswith(prefix) for line in lines), prefix
    # every engine variant replayed the trace without a hazard (it is built clean)
    for line in lines:
        if line.startswith(("(a", "(b")):
            assert line.endswith("0 hazards (0 errors)"), line
    results = json.loads(out.read_text())
    assert results["ratios"]["bulk_events_per_second"] > 0
    assert results["ratios"]["calls_large_vs_small_live"] > 0
    assert "lookup_increase_large_ns" in results["ratios"]


def test_the_lookup_floor_finds_what_an_access_finds():
    """bench_engine.py's (l) variant: Engine._lookup takes access's arguments and says
    whether the pointer is inside a live storage, as access's first step finds it."""
    from esper_lifetimes import Engine

    e = Engine()
    e.alloc(0x1000, 256, 1)
    assert e._lookup(0x1000, 256, 1)
    assert e._lookup(0x10FF, 1, 2, True)  # an interior pointer, any stream
    assert not e._lookup(0x1100, 1, 1)
    e.free(0x1000)
    assert not e._lookup(0x1000, 256, 1)
    assert e.hazard_count() == 0 and e.storage_at(0x1000) is None


def test_bench_hooks_prints_untracked_and_always_on_costs():
    proc = subprocess.run(
        [sys.executable, str(BENCH.parent / "bench_hooks.py"), "--number", "200"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].split()[:4] == ["call", "untracked", "always-on", "extra"], proc.stdout
    rows = [line.split() for line in lines[2:-1]]
    names = ["record_stream", "wait_stream", "event_record", "event_wait"]
    assert [r[0] for r in rows] == [*names, "stream_synchronize", "item"], proc.stdout
    assert all(len(r) == 5 and r[1].endswith("us") and r[4] in ("PASS", "MISS") for r in rows)
    assert lines[-1].startswith("worst extra per hooked call: "), proc.stdout


def test_bench_scale_quick_prints_every_section():
    proc = subprocess.run(
        [sys.executable, str(BENCH.parent / "bench_scale.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for heading in (
        "1. cost per event against live storages",
        "2. cost per event against streams",
        "3. memory per live storage",
        "4. whole-buffer reads after racy row writes",
    ):
        assert heading in out, out
    lines = out.splitlines()
    assert sum("x the 1,000 case" in line for line in lines) == 2, out
    assert any("bytes/storage" in line for line in lines), out
    assert any(line.rstrip().endswith("x the 100-row case") for line in lines), out


def test_bench_checked_prints_the_three_variants():
    proc = subprocess.run(
        [sys.executable, str(BENCH.parent / "bench_checked.py"), "--rounds", "2", "--number", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].split() == ["variant", "per", "call", "extra"], proc.stdout
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["plain", "@checked", "track()"], proc.stdout
    assert rows[0][1].endswith("us") and rows[1][2].endswith("us"), proc.stdout
    assert "the plain call)" in lines[3] and "the plain call)" in lines[4], proc.stdout
