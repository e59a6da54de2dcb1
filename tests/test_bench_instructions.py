"""benchmarks/bench_instructions.py: its valgrind client requests are harmless without
valgrind, its dump parsing reads callgrind's format, and (where valgrind is installed)
one real counted run prints a per-step count. No figure is judged here."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("esper_lifetimes")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_instructions as bi  # noqa: E402


def test_client_requests_do_nothing_outside_valgrind():
    try:
        req = bi.Requests()
    except OSError as exc:  # a kernel that refuses executable anonymous pages
        pytest.skip(f"no executable page here: {exc}")
    assert not req.on_valgrind()
    for r in (bi.START_INSTRUMENTATION, bi.ZERO_STATS, bi.STOP_INSTRUMENTATION):
        assert req(r) == 0  # the magic sequence is a no-op natively: default answer
    req.dump("steps")  # a pointer argument: still nothing happens


def test_parse_dump_reads_the_summary_line(tmp_path):
    dump = tmp_path / "cg.x.1"
    dump.write_text(
        "version: 1\ncreator: callgrind-3.19.0\ncmd: python x.py\npart: 1\n"
        "events: Ir D1mr DLmr\nsummary: 1000 20 3\nfl=(1) x.c\nfn=(1) f\n5 1000 20 3\n"
        "totals: 1000 20 3\n"
    )
    counts = bi.parse_dump(str(dump))
    assert counts == {"Ir": 1000, "D1mr": 20, "DLmr": 3}
    assert bi.cycles(counts) == 1000 + 10 * 20 + 100 * 3
    dump.write_text("events: Ir Bc Bcm Bi Bim\nsummary: 1000 100 7 50 5\n")
    assert bi.mispredicts(bi.parse_dump(str(dump))) == 7 + 5
    dump.write_text("events: Ir\n")
    with pytest.raises(RuntimeError, match="no events/summary"):
        bi.parse_dump(str(dump))


def test_unknown_variant_is_named():
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_instructions.py"), "--variants", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if shutil.which("valgrind") is None:
        assert proc.returncode == 2 and "needs valgrind" in proc.stdout
    else:
        assert proc.returncode == 2 and "unknown variants ['nope']" in proc.stdout


def _counted(*args: str, jobs: str = "1") -> list[str]:
    """The output lines of one real bench_instructions.py run (which must succeed)."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_instructions.py"), *args, "--jobs", jobs],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_one_counted_run_prints_instructions_per_step():
    lines = _counted("--loop", "mlp", "--variants", "untracked", "--steps", "1", "--warmup", "1")
    assert lines[0].startswith("mlp loop: instructions per step (callgrind Ir), 1 steps"), lines
    row = lines[1].split()
    assert row[0] == "untracked" and row[2] == "M/step" and float(row[1]) > 0.1, lines


def test_engine_table_prints_per_event_counts_and_the_timed_ratios(capsys):
    import argparse

    counts = {"sanitizer": 30_000, "call per launch": 1_000, "floor per launch": 800}
    res = {v: {"ops_per_step": 100, "counts": {"Ir": n * 100 * 2}} for v, n in counts.items()}
    args = argparse.Namespace(steps=2, warmup=1, cache_sim=False)
    assert bi.print_engine(args, list(counts), res, 1.0) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("engine loop: instructions per event (callgrind Ir)")
    assert out[1].split() == ["sanitizer", "30000", "/event"]
    assert "sanitizer (no stack capture) / one call per launch = 30.00x (target >= 20x" in out[4]
    assert "one call per launch / its no-op floor = 1.25x" in out[5]
    # a ratio whose two variants did not both run is not printed
    assert not any("one call per event" in line for line in out)


@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind is not installed")
def test_one_counted_engine_run_prints_instructions_per_event():
    variants = "bulk replay,call per event,floor per event"
    lines = _counted("--loop", "engine", "--events", "400", "--variants", variants, jobs="2")
    assert "trace of 401 events" in lines[0], lines  # the trace ends with a device sync
    rows = [line.split() for line in lines[1:4]]
    assert [r[-1] for r in rows] == ["/event"] * 3, lines
    bulk, call, floor = (float(r[-2]) for r in rows)
    # a Python call per event costs more than the compiled bulk path's per-event work,
    # and the engine's work adds to its no-op floor
    assert 0 < bulk < call and floor < call, lines
    assert any("one call per event / its no-op floor" in line for line in lines), lines


@pytest.mark.parametrize("variant", ["no-op modes", "emulated+tracked"])
def test_the_emulate_loop_runs_each_variant_natively(tmp_path, variant):
    """A child's run outside valgrind (its client requests do nothing there): the loop
    bench_emulate.py times, under the variant's modes, on the variant's device."""
    out = tmp_path / "child.json"
    args = ["--child", "--loop", "emulate", "--variant", variant, "--steps", "2"]
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_instructions.py"), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    info = json.loads(out.read_text())
    assert info == {"on_valgrind": False, "ops_per_step": 100}
