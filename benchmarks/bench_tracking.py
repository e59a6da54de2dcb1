"""Cost of ``track()`` on real torch code, against the dispatch machinery it rides on.

Runs one op sequence (a small MLP's forward, backward and SGD step, on the CPU) four
ways in one process (plus ablations of track()), interleaved and repeated, and prints
the best time of each:

* untracked;
* under a stock no-op ``TorchDispatchMode`` (torch wraps its ``__torch_dispatch__`` in a
  dynamo-disabling wrapper);
* under a lean no-op mode, dispatched exactly as ``track()``'s mode is (no wrapper);
* under ``esper_lifetimes.track(on_hazard="collect")``, CPU tensors on virtual streams.

Times are the process's CPU time (``time.process_time``), best of interleaved rounds, so
that other processes sharing the machine disturb the ratios as little as possible.

The target: track()'s overhead over untracked is at most 1.25x the stock no-op mode's
overhead. The ratio is printed against both no-op modes; the lean one is the strict
comparison (same dispatch path, so the difference is the tracker's own work).

The floor: a Python dispatch mode costs at least the lean no-op mode, and a tracker at
least that plus its engine calls. A counting pass reports the engine calls per op and
their cost (each engine method timed alone), so the tracker's own Python per op is
track()'s overhead minus the no-op mode's minus the engine's. A last pass times two
parts of that Python per call: the frees (each registered storage's weakref callback) and
the walks from freshly created internal frames (module calls) to the user's frame.

    python benchmarks/bench_tracking.py [--steps 10] [--repeats 40] [--width 64]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "python"))

import esper_lifetimes  # noqa: E402

TARGET = 1.25  # track()'s overhead / the stock no-op mode's overhead


class StockNoop(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        return func(*args, **(kwargs or {}))


class LeanNoop(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        return func(*args, **(kwargs or {}))


class Counter(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.n += 1
        return func(*args, **(kwargs or {}))


def make(width: int, depth: int, batch: int):
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    for _ in range(depth):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, width)
    y = torch.randn(batch, 1)
    return model, opt, x, y


def step(model, opt, x, y) -> None:
    opt.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()


def run(ctx_factory, steps: int, parts) -> float:
    model, opt, x, y = parts
    gc.collect()
    with ctx_factory():
        t0 = time.process_time()
        for _ in range(steps):
            step(model, opt, x, y)
        return time.process_time() - t0


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    # short blocks, many of them: the machine's slow spells last seconds, and the best
    # block of each variant is what is compared
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=40)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    parts = make(args.width, args.depth, args.batch)

    counter = Counter()
    with counter:
        step(*parts)
    ops_per_step = counter.n

    ways = {
        "untracked": _Null,
        "stock no-op mode": StockNoop,
        "lean no-op mode": LeanNoop,
        "track()": lambda: esper_lifetimes.track("collect", cpu="device"),
    }
    # In-situ ablation: track() with its per-op path cut after the mode's head (budget,
    # plan lookup) and after the site; what is left of track() is the storage work.
    cuts = {
        "track() head only": ablated("tr = self.tracker"),
        "track() head+site": ablated("if tr._cpu_device:", in_try=True),
        "track() no input access": ablated(None, drop="access(ref.ptr, nb, vh, w, site)"),
        "track() caller frame, no site": ablated(None, frame_only=True),
    }
    missing = [k for k, f in cuts.items() if f is None]
    ways.update({k: f for k, f in cuts.items() if f is not None})
    for f in ways.values():  # warm-up: plans, caches, allocator
        run(f, 3, parts)
    best = {k: float("inf") for k in ways}
    names = list(ways)
    for r in range(args.repeats):
        for k in names[r % len(names) :] + names[: r % len(names)]:  # the order rotated
            best[k] = min(best[k], run(ways[k], args.steps, parts))

    per_op = {k: v / args.steps / ops_per_step * 1e6 for k, v in best.items()}
    base = per_op["untracked"]
    print(
        f"MLP {args.depth}x{args.width}, batch {args.batch}: forward+backward+SGD, "
        f"{ops_per_step} aten ops per step, best of {args.repeats} x {args.steps} steps"
    )
    print(f"torch {torch.__version__}, {sys.version.split()[0]}")
    for k, v in per_op.items():
        print(f"  {k:18s} {v:8.2f} us/op   {best[k] / args.steps * 1e3:8.3f} ms/step")
    tr = per_op["track()"] - base
    for name in ("stock no-op mode", "lean no-op mode"):
        ov = per_op[name] - base
        print(
            f"  track() overhead / {name} overhead = {tr:.2f} / {ov:.2f} us/op"
            f" = {tr / ov:.2f}x   (target <= {TARGET}x)"
        )
    print(f"  track() / untracked = {per_op['track()'] / base:.2f}x")
    if missing:
        print(f"  ablation skipped: the mode's source no longer has the cut lines ({missing})")
    else:
        lean_ov = per_op["lean no-op mode"] - base
        stock_ov = per_op["stock no-op mode"] - base
        head = per_op["track() head only"] - per_op["lean no-op mode"]
        site = per_op["track() head+site"] - per_op["track() head only"]
        rest = per_op["track()"] - per_op["track() head+site"]
        acc = per_op["track()"] - per_op["track() no input access"]
        frame = site - (per_op["track()"] - per_op["track() caller frame, no site"])
        print(
            f"  in situ (ablation, best-of): the mode's head {head:.2f} us/op, the site "
            f"{site:.2f} us/op (of which fetching the caller's frame, sys._getframe(1): "
            f"{frame:.2f}), the storages (inputs, fresh outputs, frees) {rest:.2f} us/op, "
            f"of which the inputs' engine calls (compiled) {acc:.2f} us/op"
        )
        budget = (TARGET - 1) * stock_ov - (lean_ov - stock_ov)
        print(
            f"  the target leaves {budget:.2f} us/op for all of track()'s own work above the "
            f"lean mode; head and site alone take {head + site:.2f} "
            f"(a tracker doing no storage work: {(lean_ov + head + site) / stock_ov:.2f}x)"
        )
    calls, eng_us = engine_share(parts, args.steps, ops_per_step)
    lean = per_op["lean no-op mode"] - base
    per = ", ".join(f"{k} {v:.2f}" for k, v in calls.items())
    print(
        f"  floor: the lean no-op mode's {lean:.2f} us/op plus the engine's {eng_us:.2f} "
        f"us/op ({per} calls/op) = {(lean + eng_us) / lean:.2f}x the lean mode's overhead; "
        f"track()'s own Python: {tr - lean - eng_us:.2f} us/op"
    )
    parts_of = breakdown(parts, args.steps, ops_per_step)
    per = "; ".join(
        f"{k} {n:.2f}/op x {us:.2f} us = {n * us:.2f} us/op" for k, (n, us) in parts_of.items()
    )
    print(f"  timed per call (each with a timer's ~0.1 us): {per}")


def ablated(  # noqa: ANN201
    cut: str | None, in_try: bool = False, drop: str | None = None, frame_only: bool = False
):
    """A context factory: ``track()`` with its mode's ``__torch_dispatch__`` cut short at
    the line starting ``cut`` (the op still runs, the rest of the tracker's work is
    skipped), or with the line ``drop`` (an engine call) made a no-op, or (``frame_only``)
    with the site found as ``None`` after the caller's frame is fetched; None when the
    source no longer has those lines. The copy is compiled from the mode's own source, so
    what it keeps is exactly the shipped code."""
    import inspect
    import textwrap

    from esper_lifetimes.tracking import dispatch

    src = textwrap.dedent(inspect.getsource(dispatch.Mode.__torch_dispatch__))
    lines = src.splitlines(keepends=True)
    body = None
    if frame_only:
        texts = [line.strip() for line in lines]
        if "f = _getframe(1)" not in texts or "del f, m" not in texts:
            return None
        i, j = texts.index("f = _getframe(1)"), texts.index("del f, m")
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        body = "".join(lines[: i + 1]) + f"{indent}site = None\n{indent}del f\n"
        body += "".join(lines[j + 1 :])
    for i, line in enumerate(lines):
        text = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        if cut is not None and text.startswith(cut):
            body = "".join(lines[:i]) + f"{indent}return out\n"
            if in_try:  # close the hot path's try block
                body += f"{indent[:-4]}except Exception:\n{indent}pass\n"
            break
        if drop is not None and text == drop:
            lines[i] = f"{indent}pass\n"
            body = "".join(lines)
            break
    if body is None:
        return None
    ns = dict(vars(dispatch))
    exec(compile(body, dispatch.__file__, "exec"), ns)  # noqa: S102
    cut_fn = ns["__torch_dispatch__"]

    class Ablated:
        def __enter__(self):  # noqa: ANN204
            self._saved = dispatch.Mode.__torch_dispatch__
            dispatch.Mode.__torch_dispatch__ = cut_fn
            self._tr = esper_lifetimes.track("collect", cpu="device")
            return self._tr.__enter__()

        def __exit__(self, *exc):  # noqa: ANN002, ANN204
            try:
                return self._tr.__exit__(*exc)
            finally:
                dispatch.Mode.__torch_dispatch__ = self._saved

    return Ablated


def engine_share(parts, steps: int, ops_per_step: int) -> tuple[dict[str, float], float]:  # noqa: ANN001
    """Engine calls per op under track() (counted) and their cost per op (each method
    timed alone on the same engine with the arguments of its last call; an alloc with the
    free every storage gets)."""
    counts: dict[str, int] = {}
    last: dict[str, tuple] = {}
    with esper_lifetimes.track("collect", cpu="device") as tr:
        eng = tr._eng
        for name in ("_access", "_alloc"):
            fn = getattr(tr, name)

            def counted(*a, _fn=fn, _name=name):  # noqa: ANN002, ANN202
                counts[_name] = counts.get(_name, 0) + 1
                last[_name] = a
                return _fn(*a)

            setattr(tr, name, counted)
        for _ in range(steps):
            step(*parts)
        for name in ("_access", "_alloc"):
            delattr(tr, name)
            setattr(tr, name, getattr(eng, name[1:]))
        cost: dict[str, float] = {}
        n = 20_000
        if "_access" in last:
            a = last["_access"]
            t0 = time.process_time()
            for _ in range(n):
                eng.access(*a)
            cost["_access"] = (time.process_time() - t0) / n * 1e6
        if "_alloc" in last:
            _p, nb, stream, site = last["_alloc"]
            ptr = 1 << 46  # bytes no storage of the step uses
            t0 = time.process_time()
            for _ in range(n):
                eng.alloc(ptr, nb, stream, site)
                eng.free(ptr, None)
            cost["_alloc"] = (time.process_time() - t0) / n * 1e6  # with its free
    ops = steps * ops_per_step
    per_op = {k[1:]: v / ops for k, v in counts.items()}
    us = sum(per_op[k[1:]] * cost.get(k, 0.0) for k in counts)
    return per_op, us


def breakdown(parts, steps: int, ops_per_step: int) -> dict[str, tuple[float, float]]:  # noqa: ANN001
    """Two parts of track()'s own Python, timed per call in a separate pass: the free of
    each registered storage (its weakref callback) and the walk from an internal frame
    that no earlier walk marked to the user's frame (``SiteTable.from_frame``: the
    frames a module call creates). Returns name -> (calls per op, us per call)."""
    from esper_lifetimes.sites import SiteTable

    spent = {"frees": [0, 0], "site walks": [0, 0]}
    pc = time.perf_counter_ns
    walk = SiteTable.from_frame

    def timed_walk(self, f):  # noqa: ANN001, ANN202
        t0 = pc()
        site = walk(self, f)
        spent["site walks"][0] += 1
        spent["site walks"][1] += pc() - t0
        return site

    with esper_lifetimes.track("collect", cpu="device") as tr:
        free = tr._on_free_cb

        def timed_free(ref) -> None:  # noqa: ANN001
            t0 = pc()
            free(ref)
            spent["frees"][0] += 1
            spent["frees"][1] += pc() - t0

        tr._on_free_cb = timed_free
        step(*parts)  # storages registered with the timed callback
        for v in spent.values():
            v[:] = [0, 0]
        SiteTable.from_frame = timed_walk
        try:
            for _ in range(steps):
                step(*parts)
        finally:
            SiteTable.from_frame = walk
    ops = steps * ops_per_step
    return {k: (n / ops, ns / n / 1e3 if n else 0.0) for k, (n, ns) in spent.items()}


if __name__ == "__main__":
    main()
