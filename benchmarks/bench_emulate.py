"""Per-op cost of CUDA emulation, against plain CPU and against tracking alone, in one run.

    .venv/bin/python benchmarks/bench_emulate.py [--ops 2000] [--rounds 7]

Four configurations run the same loop of small elementwise ops (``y = x * 2 + 1``, two
aten ops a step, on 256 floats, so that the op itself is cheap and the overhead shows):

* ``plain``: CPU tensors, nothing active;
* ``no-op modes``: a function mode and a dispatch mode that only call the op: the floor
  that any emulation built on torch's modes pays;
* ``emulated``: ``emulate_cuda()`` and ``device="cuda"`` tensors, no tracker;
* ``tracked``: ``track()`` on CPU tensors (virtual streams), no emulation;
* ``emulated+tracked``: both, as ``esper-lifetimes run --emulate-cuda`` runs a script.

Each round times every configuration once (alternating, so that a disturbance of the
shared machine hits all of them); a configuration's figure is its median over the rounds,
in microseconds per op (CPU time, ``time.process_time``). The ratios are against plain,
and emulated+tracked against tracked (what emulation adds to tracking).
"""

from __future__ import annotations

import argparse
import statistics
import time

import esper_lifetimes as el
import torch
from esper_lifetimes.emulate import emulate_cuda
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

N = 256


def _loop(x: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        y = x * 2 + 1
        del y


def _time(fn, steps: int) -> float:  # noqa: ANN001
    t0 = time.process_time()
    fn(steps)
    return (time.process_time() - t0) / (2 * steps) * 1e6  # two aten ops a step


def _plain(steps: int) -> None:
    _loop(torch.randn(N), steps)


class _NoOpFn(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        return func(*args, **(kwargs or {}))


class _NoOpDispatch(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        return func(*args, **(kwargs or {}))


def _floor(steps: int) -> None:
    with _NoOpDispatch(), _NoOpFn():
        _loop(torch.randn(N), steps)


def _emulated(steps: int) -> None:
    with emulate_cuda():
        _loop(torch.randn(N, device="cuda"), steps)


def _tracked(steps: int) -> None:
    with el.track("collect"):
        _loop(torch.randn(N), steps)


def _both(steps: int) -> None:
    with emulate_cuda(), el.track("collect"):
        _loop(torch.randn(N, device="cuda"), steps)


CONFIGS = {
    "plain": _plain,
    "no-op modes": _floor,
    "emulated": _emulated,
    "tracked": _tracked,
    "emulated+tracked": _both,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=2000, help="loop steps per timing (2 ops each)")
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    for fn in CONFIGS.values():  # warm up: plans, caches, imports
        fn(200)
    times: dict[str, list[float]] = {k: [] for k in CONFIGS}
    for _ in range(args.rounds):
        for name, fn in CONFIGS.items():
            times[name].append(_time(fn, args.ops))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}; {args.rounds} rounds of {2 * args.ops} ops, medians")
    print(f"{'configuration':<18} {'us/op':>8} {'x plain':>8} {'extra us/op':>12}")
    for name, us in med.items():
        print(f"{name:<18} {us:8.2f} {us / med['plain']:8.2f} {us - med['plain']:12.2f}")
    extra = med["emulated+tracked"] - med["tracked"]
    print(
        f"emulation on top of tracking: +{extra:.2f} us/op "
        f"({med['emulated+tracked'] / med['tracked']:.2f}x tracked alone); "
        f"emulation above the no-op modes' floor: "
        f"+{med['emulated'] - med['no-op modes']:.2f} us/op"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
