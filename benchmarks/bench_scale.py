"""The engine at scale: cost per event against live storages and streams, memory per
live storage, and per-access cost when a storage's shadow state piles up.

Each figure is printed with its ratio against a baseline measured in the same run
(medians of interleaved repetitions; the garbage collector paused while timing):

1. cost per event, one engine call per event (the synthetic training trace of
   ``bench_engine.py``), against the number of live storages: 1k (baseline), 10k, 100k,
   1M, accesses spread uniformly over all of them;
2. cost per event against the number of streams: 2 (baseline), 4, 8, 16, 32, 64, with
   1,000 live storages, one call per event and the bulk path (``replay``: the engine's
   own cost, which the call's hides);
3. memory per live storage: the process's resident memory grown by allocating 1,000,000
   storages in one engine, divided by 1,000,000 (and the same after each was read once on
   another stream, which adds per-stream state);
4. the shadow-state case: racy row writes from two streams into one buffer, then
   whole-buffer reads: per-read cost with 1,000 rows (baseline) and with 64,000 rows.
   Without a bound this grew from 0.3 ms to 1.2 s per read; the shadow is coarsened past
   256 segments per storage (see rust/shadow.rs), so the ratio stays small.

    python benchmarks/bench_scale.py            # a few minutes on 2 cores
    python benchmarks/bench_scale.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_engine  # noqa: E402  (the synthetic trace and its call-per-event driver)
from esper_lifetimes import Engine  # noqa: E402


def rss() -> int:
    """Resident set size of this process, in bytes (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def per_event(trace: bench_engine.SyntheticTrace) -> float:
    """ns per event: a fresh engine with the live set allocated, then one call per row."""
    e = Engine()
    e.replay(trace.prefill)
    rows = trace.work.tolist()
    return bench_engine.timed(lambda: bench_engine.drive_calls(rows, e)) / len(rows) * 1e9


def medians(variants: dict[str, Callable[[], float]], reps: int) -> dict[str, float]:
    """Runs the variants interleaved ``reps`` times; the median of each."""
    samples: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            samples[name].append(fn())
    return {k: statistics.median(v) for k, v in samples.items()}


def live_storages(events: int, reps: int, sizes: list[int]) -> None:
    print("1. cost per event against live storages (4 streams, one call per event)")
    traces = {n: bench_engine.generate(events, 4, n, seed=0) for n in sizes}
    m = medians({str(n): (lambda t=t: per_event(t)) for n, t in traces.items()}, reps)
    base = m[str(sizes[0])]
    for n in sizes:
        ns = m[str(n)]
        print(f"   {n:>9,} live   {ns:8.1f} ns/event   {ns / base:5.2f}x the {sizes[0]:,} case")


def per_event_bulk(trace: bench_engine.SyntheticTrace) -> float:
    """ns per event of the bulk path (``replay``): the engine's own work, which the Python
    call of ``per_event`` (most of its cost) hides."""
    e = Engine()
    e.replay(trace.prefill)
    return (
        bench_engine.timed(lambda: bench_engine.drive_bulk(trace.work, e)) / len(trace.work) * 1e9
    )


def streams(events: int, reps: int, counts: list[int]) -> None:
    print("2. cost per event against streams (1,000 live storages): one call per event; bulk")
    traces = {k: bench_engine.generate(events, k, max(1000, 4 * k), seed=0) for k in counts}
    variants: dict[str, Callable[[], float]] = {}
    for k, t in traces.items():
        variants[f"call {k}"] = lambda t=t: per_event(t)
        variants[f"bulk {k}"] = lambda t=t: per_event_bulk(t)
    m = medians(variants, reps)
    call0, bulk0 = m[f"call {counts[0]}"], m[f"bulk {counts[0]}"]
    for k in counts:
        c, b = m[f"call {k}"], m[f"bulk {k}"]
        print(
            f"   {k:>3} streams   {c:8.1f} ns/event   {c / call0:5.2f}x the {counts[0]} case"
            f"   bulk {b:6.1f} ns/event   {b / bulk0:5.2f}x"
        )


def memory(n: int) -> None:
    print(f"3. memory per live storage ({n:,} storages in one engine)")
    gc.collect()
    before = rss()
    e = Engine()
    base = 0x7F00_0000_0000
    alloc, access = e.alloc, e.access
    for i in range(n):
        alloc(base + i * 4096, 4096, 1)
    after_alloc = rss()
    for i in range(n):
        access(base + i * 4096, 4096, 2)
    after_use = rss()
    assert e.stats()["live_storages"] == n
    print(f"   allocated:                 {(after_alloc - before) / n:7.1f} bytes/storage")
    print(f"   after one use on a stream: {(after_use - before) / n:7.1f} bytes/storage")
    del e


def shadow(reps: int, rows: tuple[int, int]) -> None:
    print("4. whole-buffer reads after racy row writes from two streams (one buffer)")

    def per_read(n_rows: int) -> float:
        e = Engine()
        row = 64
        e.alloc(0x1000, n_rows * row, 0)
        for r in range(n_rows):
            e.access(0x1000 + r * row, row, 1 + r % 2, True)
        reads = 20

        def run() -> float:
            t0 = time.perf_counter()
            for _ in range(reads):
                e.access(0x1000, n_rows * row, 3)
            return time.perf_counter() - t0

        return bench_engine.timed(run) / reads * 1e6

    m = medians({str(n): (lambda n=n: per_read(n)) for n in rows}, reps)
    lo, hi = m[str(rows[0])], m[str(rows[1])]
    print(f"   {rows[0]:>6,} rows   {lo:10.1f} us/read")
    print(f"   {rows[1]:>6,} rows   {hi:10.1f} us/read   {hi / lo:5.2f}x the {rows[0]:,}-row case")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    ap.add_argument("--events", type=int, default=200_000, help="events per trace (200000)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per variant (3)")
    ap.add_argument(
        "--skip", default="", help="comma list of sections to skip: live,streams,memory,shadow"
    )
    args = ap.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    events, reps = (20_000, 1) if args.quick else (args.events, args.reps)
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000, 1_000_000]
    counts = [2, 8] if args.quick else [2, 4, 8, 16, 32, 64]
    print(
        f"esper-lifetimes engine at scale: CPython {sys.version.split()[0]}, {os.cpu_count()} CPUs"
    )
    if "live" not in skip:
        live_storages(events, reps, sizes)
    if "streams" not in skip:
        streams(events, reps, counts)
    if "memory" not in skip:
        memory(10_000 if args.quick else 1_000_000)
    if "shadow" not in skip:
        shadow(reps, (100, 1_000) if args.quick else (1_000, 64_000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
