"""Cost of the calls the always-on mode keeps hooked all the time, untracked vs always-on.

Prints, per call, the best-of-5 time untracked and with ``enable(mode="always-on",
sample=0)`` (no window ever opens: only the hooks run), and the ratio, in one run:

    .venv/bin/python benchmarks/bench_hooks.py
"""

from __future__ import annotations

import argparse
import timeit

import esper_lifetimes as el
import torch
from esper_lifetimes import virtual


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=20_000, help="calls per repetition")
    args = ap.parse_args(argv)

    s = virtual.Stream(name="side")
    d = virtual.default_stream()
    x = torch.randn(64)

    def record_stream() -> None:
        x.record_stream(s)

    def wait_stream() -> None:
        s.wait_stream(d)

    def stream_synchronize() -> None:
        s.synchronize()

    def item() -> None:
        x[0].item()

    calls = (record_stream, wait_stream, stream_synchronize, item)

    def best(fn) -> float:  # noqa: ANN001
        return min(timeit.repeat(fn, number=args.number, repeat=5)) / args.number * 1e6

    untracked = {f.__name__: best(f) for f in calls}
    el.enable(mode="always-on", sample=0.0)
    try:
        hooked = {f.__name__: best(f) for f in calls}
    finally:
        el.disable()
        el.enable()
    print(f"{'call (virtual streams)':<24}{'untracked':>12}{'always-on':>12}{'extra':>10}")
    for name in untracked:
        u, h = untracked[name], hooked[name]
        print(f"{name:<24}{u:>10.2f}us{h:>10.2f}us{h - u:>8.2f}us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
