"""The cost of one ``@checked`` call and of one ``track()`` region around a small function.

``@checked`` is meant for hot functions: each call outside a region opens a region of
its own (patches installed, a dispatch mode pushed, an engine, the verdicts at exit), so
its fixed cost per call is what a decorated hot function pays on top of its ops. This
prints, per call, the plain function, the same function decorated, and the plain function
inside a ``with track():`` of its own, as medians of interleaved rounds (process CPU
time), with each one's extra over the plain call measured in the same round.

    python benchmarks/bench_checked.py                 # 15 rounds x 200 calls
    python benchmarks/bench_checked.py --rounds 5 --number 50
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

import esper_lifetimes  # noqa: E402

N = 256


def small(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1  # two ops


checked_small = esper_lifetimes.checked(small)


def in_region(x: torch.Tensor) -> torch.Tensor:
    with esper_lifetimes.track():
        return small(x)


def per_call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, number: int) -> float:
    t0 = time.process_time()
    for _ in range(number):
        fn(x)
    return (time.process_time() - t0) / number


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (15)")
    ap.add_argument("--number", type=int, default=200, help="calls per variant per round (200)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.number < 1:
        ap.error("--rounds and --number must be at least 1")
    x = torch.randn(N)
    variants = {"plain": small, "@checked": checked_small, "track() region": in_region}
    for fn in variants.values():
        fn(x)  # warm: plans, patch tables, sites
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotated each round
        for name in order:
            times[name].append(per_call(variants[name], x, args.number))
    print(
        f"a {N}-element x * 2 + 1 (two ops) per call: median of {args.rounds} interleaved "
        f"rounds x {args.number} calls, process CPU time; torch {torch.__version__}"
    )
    print(f"{'variant':16s} {'per call':>12s} {'extra':>12s}")
    plain = times["plain"]
    for name in names:
        med = statistics.median(times[name])
        line = f"{name:16s} {med * 1e6:10.1f}us"
        if name != "plain":
            extra = statistics.median(t - p for t, p in zip(times[name], plain, strict=True))
            line += (
                f" {extra * 1e6:10.1f}us   ({med / statistics.median(plain):.1f}x the plain call)"
            )
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
