"""A vectorized multi-environment training loop: what always-on tracking costs and finds.

The loop has the shape of real multi-environment training. E environments (default 4),
each with its own stream (esper_lifetimes' virtual streams on the CPU, CUDA streams when
a GPU is present), and per step:

* a shared batch is created on the default stream, split (``tensor_split``) and cloned
  per environment, and handed to the env streams with ``env.wait_stream(default)`` and
  ``record_stream(env)``;
* per environment, under ``with stream(env)``: forward through a small MLP, loss,
  backward, SGD step;
* a fused validation pass: for each environment an override tensor is built on the
  default stream with ``torch.full(...)`` and filled per configuration, read on the env
  stream (``val = model(x) * override``), and the name ``override`` is rebound for the
  next environment *before* the synchronize that ends the pass. That rebinding frees a
  storage that the previous env stream may still be reading: the planted hazard
  (``unsynced-free``; ``reuse-race`` when the bytes are handed out again).
  ``--hazard fixed`` adds ``override.record_stream(env)``, which makes the loop clean;
* ``synchronize()`` ends the pass; the summed loss is read with ``.item()``.

Measured in one run, variants interleaved, medians and ratios:

1. step time untracked, under always-on tracking (default sample rate) and under full
   tracking (``track(on_hazard="collect")``), and the overhead ratios;
2. detection: over ``--seeds`` seeds, the fraction of runs in which always-on tracking
   (seeded) reports the planted hazard within ``--max-steps`` steps;
3. false errors: error-severity hazards over ``--steps-false`` steps of the fixed loop,
   under always-on tracking (default rate, and every window) and under full tracking;
   then the same with a per-env state carried from step to step on each env stream
   (allocated outside one window, used and freed on its own stream inside the next);
4. memory: the always-on tracker's engine stats and the process's RSS at 10,000 and at
   ``--steps-memory`` steps (growth between the two);
5. ``--curve``: overhead and detection for several sample rates.

Step times are the process's CPU time (``time.process_time``, one torch thread) on the
CPU, wall time on CUDA. Other processes on the machine disturb wall time; CPU time much
less, and each ratio is the median of per-round ratios of adjacent blocks. The judged
always-on figure is total over total (every block's windows count), printed with a
seeded 95% interval (a moving-block bootstrap over rounds); full tracking runs in blocks of
``--block / --full-block-div`` steps, so the rounds go to the figure the target judges.

    python benchmarks/bench_training_loop.py            # everything, default sizes
    python benchmarks/bench_training_loop.py --quick    # a smoke run (seconds)
    python benchmarks/bench_training_loop.py --curve    # plus the sample-rate table
    python benchmarks/bench_training_loop.py --steps-memory 20000 --skip time,detect

``--skip`` drops sections (time, detect, false, memory); ``--strict`` exits 1 when
detection, false errors or memory miss their targets (never for timing); ``--cpu``
uses virtual streams even with a GPU.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import logging
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import esper_lifetimes  # noqa: E402
from esper_lifetimes import virtual  # noqa: E402

try:
    from esper_lifetimes.modes import DEFAULT_SAMPLE
except Exception:  # an older package: the rate this benchmark always used
    DEFAULT_SAMPLE = 0.01

# Targets (printed next to the figures).
TARGET_OVERHEAD = 1.02  # always-on step time / untracked step time
TARGET_DETECTION = 0.99  # fraction of seeds that report the planted hazard
DETECTED_KINDS = ("unsynced-free", "reuse-race")

WIDTH = 32  # MLP input and hidden width
OUT = 8  # MLP output width (and override columns)
PER_ENV = 16  # rows of the batch per environment


# ---------------------------------------------------------------------------------------
# The stream API: torch.cuda or esper_lifetimes.virtual behind one small shim


class StreamAPI:
    """The few stream calls the loop makes, on CUDA or on virtual streams."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.device = torch.device("cuda") if cuda else torch.device("cpu")
        mod: Any = torch.cuda if cuda else virtual
        self.stream = mod.stream
        self.default_stream = mod.default_stream
        self.current_stream = mod.current_stream
        self.synchronize = mod.synchronize
        self.cpu_mode = "host" if cuda else "device"

    def new_stream(self, name: str) -> Any:
        return torch.cuda.Stream() if self.cuda else virtual.Stream(name=name)

    def records(self) -> bool:
        """Whether ``t.record_stream(s)`` may be called: always on CUDA; with virtual
        streams only while esper_lifetimes has patched it (untracked, torch's own
        ``record_stream`` rejects a virtual stream, and there is nothing to record)."""
        return self.cuda or hasattr(torch.Tensor.record_stream, "__wrapped__")

    def clock(self) -> Callable[[], float]:
        return time.perf_counter if self.cuda else time.process_time

    def barrier(self) -> None:
        """Outside any tracker: wait for the device before reading a clock."""
        if self.cuda:
            torch.cuda.synchronize()


@dataclass
class Env:
    name: str
    stream: Any
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    scale: float  # the environment's configuration: override value ...
    k: int  # ... and how many columns get the bias
    bias: float
    state: torch.Tensor | None = None  # carried per-env state (``--carry``), on its stream


def make_envs(api: StreamAPI, n_envs: int, seed: int = 0, carry: bool = False) -> list[Env]:
    """``carry``: each env also carries a state tensor from step to step, allocated,
    read and freed on its own stream (a recurrent state or the next observation, as in
    RL): safe, and a check on how a tracker treats storages it did not see allocated."""
    torch.manual_seed(seed)
    envs = []
    for i in range(n_envs):
        model = torch.nn.Sequential(
            torch.nn.Linear(WIDTH, WIDTH),
            torch.nn.ReLU(),
            torch.nn.Linear(WIDTH, WIDTH),
            torch.nn.ReLU(),
            torch.nn.Linear(WIDTH, OUT),
        ).to(api.device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        envs.append(
            Env(
                name=f"env{i}",
                stream=api.new_stream(f"env{i}"),
                model=model,
                opt=opt,
                scale=1.0 + 0.5 * i,
                k=1 + (i * 3) % OUT,
                bias=0.1 * (i + 1),
            )
        )
        if carry:
            env = envs[-1]
            with api.stream(env.stream):
                env.state = torch.zeros(PER_ENV, WIDTH, device=api.device)
    return envs


# ---------------------------------------------------------------------------------------
# One training step


def train_step(envs: list[Env], api: StreamAPI, fixed: bool) -> float:
    """One vectorized step: training on every env stream, then the fused validation
    pass. Returns the summed loss (read on the host with ``.item()``)."""
    dev = api.device
    n = len(envs)
    D = api.default_stream()
    records = api.records()

    # the shared batch, on the default stream
    batch = torch.randn(n * PER_ENV, WIDTH, device=dev)
    target = torch.randn(n * PER_ENV, OUT, device=dev)
    losses = []
    for env, xb, yb in zip(envs, batch.tensor_split(n), target.tensor_split(n), strict=True):
        x = xb.clone()  # split and cloned on the default stream
        y = yb.clone()
        env.stream.wait_stream(D)  # the env stream runs after the clones
        if records:
            x.record_stream(env.stream)  # x and y are rebound below before any sync
            y.record_stream(env.stream)
        with api.stream(env.stream):
            env.opt.zero_grad(set_to_none=True)
            if env.state is not None:
                x = x + env.state
            loss = F.mse_loss(env.model(x), y)
            loss.backward()
            env.opt.step()
            if env.state is not None:  # rebinding frees last step's state, on this stream
                env.state = (0.9 * env.state + 0.1 * x).detach()  # @carried-state
        losses.append(loss.detach())

    # the fused validation pass
    vbatch = torch.randn(n * PER_ENV, WIDTH, device=dev)
    vals = []
    for env, vb in zip(envs, vbatch.tensor_split(n), strict=True):
        vx = vb.clone()
        override = torch.full((PER_ENV, OUT), env.scale, device=dev)  # @planted-free
        override[:, : env.k] += env.bias  # filled per configuration
        env.stream.wait_stream(D)  # the env stream runs after the fill
        if records:
            vx.record_stream(env.stream)
        with api.stream(env.stream), torch.no_grad():
            val = env.model(vx) * override  # @planted-use
        if fixed and records:
            override.record_stream(env.stream)  # the fix: the free waits for env's use
        vals.append(val)
    api.synchronize()  # end of the pass
    return torch.stack(losses).sum().item()


# ---------------------------------------------------------------------------------------
# Always-on mode (skipped, with the reason printed, where the API is missing)


def always_on_support() -> str | None:
    """``None`` when ``esper_lifetimes.enable(mode="always-on", ...)`` exists, else why
    not (the always-on variants are then skipped)."""
    try:
        enable = esper_lifetimes.enable
        always_on = always_on_fn()
    except Exception as exc:  # AttributeError, or the module behind it failing to import
        return f"esper_lifetimes.enable/always_on unavailable: {type(exc).__name__}: {exc}"
    try:
        params = inspect.signature(enable).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "mode" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return "esper_lifetimes.enable() does not accept mode='always-on'"
    try:
        enable(mode="always-on", sample=0.5, seed=0)
    except Exception as exc:
        return (
            "esper_lifetimes.enable(mode='always-on', sample=..., seed=...) failed: "
            f"{type(exc).__name__}: {exc}"
        )
    try:
        tr = always_on()
        if tr is None:
            return "esper_lifetimes.always_on() returned None after enable(mode='always-on')"
        for attr in ("hazards", "errors"):
            getattr(tr, attr)
    except Exception as exc:
        return f"the always-on tracker is not usable: {type(exc).__name__}: {exc}"
    finally:
        _always_on_off()
    return None


def always_on_fn() -> Callable[[], Any]:
    """``esper_lifetimes.always_on``, the function. (While the mode lived in a submodule
    of the same name, importing it rebound the package attribute to the module.)"""
    obj = esper_lifetimes.always_on
    if isinstance(obj, types.ModuleType):
        obj = obj.always_on
    return obj


def _always_on_off() -> None:
    esper_lifetimes.disable()
    # disable() also switches track() off; enable() without a mode switches it back on
    esper_lifetimes.enable()


class AlwaysOn:
    """``with AlwaysOn(rate, seed) as tr:`` always-on tracking for the block."""

    def __init__(self, sample: float, seed: int | None) -> None:
        self.sample = sample
        self.seed = seed
        self.tracker: Any = None

    def __enter__(self) -> Any:
        tr = esper_lifetimes.enable(mode="always-on", sample=self.sample, seed=self.seed)
        self.tracker = tr if tr is not None else always_on_fn()()
        return self.tracker

    def __exit__(self, *exc: Any) -> None:
        _always_on_off()


class Full:
    """``with Full(api) as tr:`` full tracking, hazards collected."""

    def __init__(self, api: StreamAPI) -> None:
        self.api = api
        self.tracker: Any = None

    def __enter__(self) -> Any:
        tr = esper_lifetimes.track(on_hazard="collect", cpu=self.api.cpu_mode)
        tr.__enter__()
        if not tr.active:
            tr.__exit__(None, None, None)
            raise RuntimeError("track() is not tracking (is esper_lifetimes disabled?)")
        self.tracker = tr
        return tr

    def __exit__(self, *exc: Any) -> None:
        self.tracker.__exit__(*exc)


class Untracked:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class PatchesOnly:
    """The ablation "patched methods, no tracker": every patch the always-on mode installs
    (stream, event and sync wrappers, ``record_stream``, the host-read methods ``tolist``,
    ``numpy``, ``cpu``, ``__repr__``, ``resize_``, the ``.item()`` wrapper) with no tracker
    active, so each patched call takes its early exit: the patches' idle cost."""

    def __enter__(self) -> None:
        from esper_lifetimes import always_on_tracker, patches

        patches.install()
        always_on_tracker.install_item_hook()

    def __exit__(self, *exc: Any) -> None:
        from esper_lifetimes import always_on_tracker, patches

        always_on_tracker.remove_item_hook()
        patches.uninstall()


class ItemOnly:
    """The ablation "``.item()`` wrapper only", no tracker: the wrapper's own cost."""

    def __enter__(self) -> None:
        from esper_lifetimes import always_on_tracker

        always_on_tracker.install_item_hook()

    def __exit__(self, *exc: Any) -> None:
        from esper_lifetimes import always_on_tracker

        always_on_tracker.remove_item_hook()


def ablation_support() -> str | None:
    try:
        from esper_lifetimes import always_on_tracker, patches

        for fn in (
            always_on_tracker.install_item_hook,
            always_on_tracker.remove_item_hook,
            patches.install,
        ):
            assert callable(fn)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ---------------------------------------------------------------------------------------
# Helpers


def rss_bytes() -> int:
    """The process's resident set size (from /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except Exception:
            return 0


def matched_count(tracker: Any) -> int:
    """How many times the planted hazard's kinds were reported (repeats included)."""
    return sum(h.count for h in tracker.hazards if h.kind in DETECTED_KINDS)


def percentile(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    i = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[i]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def engine_of(tracker: Any) -> Any:
    eng = getattr(tracker, "engine", None)
    if eng is None:
        eng = getattr(tracker, "_eng", None)
    return eng


# ---------------------------------------------------------------------------------------
# 1. Step time


def time_variants(
    api: StreamAPI,
    envs: list[Env],
    variants: dict[str, Callable[[], Any]],
    rounds: int,
    block: int,
    fixed: bool,
    stats: dict[str, dict[str, int]] | None = None,
    blocks: dict[str, int] | None = None,
) -> dict[str, list[float]]:
    """Per-step seconds of each variant, one block of ``block`` steps per variant per
    round (``blocks[name]`` steps where given), the order rotated every round. Returns
    the per-round times; ``stats`` gets, per always-on variant, the steps, windows
    opened and ops checked over the rounds."""
    clock = api.clock()
    blocks = blocks or {}
    names = list(variants)
    times: dict[str, list[float]] = {k: [] for k in names}
    for name in names:  # warm-up: plans, caches, the allocator
        with variants[name]():
            for _ in range(3):
                train_step(envs, api, fixed)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            n = blocks.get(name, block)
            gc.collect()
            with variants[name]() as tr:
                api.barrier()
                t0 = clock()
                for _ in range(n):
                    train_step(envs, api, fixed)
                api.barrier()
                t1 = clock()
                if stats is not None and hasattr(tr, "windows_opened"):
                    st = stats.setdefault(name, {"steps": 0, "windows": 0, "ops": 0})
                    st["steps"] += n
                    st["windows"] += tr.windows_opened
                    ops = getattr(tr, "ops_checked", None)
                    st["ops"] += ops() if callable(ops) else 0
            times[name].append((t1 - t0) / n)
    return times


def ratio_median(times: dict[str, list[float]], name: str, base: str = "untracked") -> float:
    return statistics.median(a / b for a, b in zip(times[name], times[base], strict=True))


def ratio_total(times: dict[str, list[float]], name: str, base: str = "untracked") -> float:
    """Total time over total time: every block counts (a window is rare; the median of
    per-round ratios could skip the blocks that had one)."""
    return sum(times[name]) / sum(times[base])


def ops_per_step(envs: list[Env], api: StreamAPI, fixed: bool) -> int:
    """The aten ops one step dispatches (counted by a no-op dispatch mode)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        train_step(envs, api, fixed)
    return Count.n


def count_late_frees(
    api: StreamAPI, envs: list[Env], rate: float, steps: int
) -> tuple[float, float]:
    """The weakref part of always-on: storages allocated in a window stay registered (a
    weakref each) and their frees reach the engine when they die, also outside windows.
    Returns (such frees per step, microseconds per free), over ``steps`` steps, seed 0."""
    n = 0
    spent = 0
    with AlwaysOn(rate, 0) as tr:
        cb = tr._on_free_cb

        def counted(ref: Any) -> None:
            nonlocal n, spent
            if tr._window is None:
                t0 = time.perf_counter_ns()
                cb(ref)
                spent += time.perf_counter_ns() - t0
                n += 1
            else:
                cb(ref)

        tr._on_free_cb = counted
        for _ in range(steps):
            train_step(envs, api, fixed=False)
    return n / steps, (spent / n / 1e3 if n else 0.0)


def ratio_total_interval(
    times: dict[str, list[float]],
    name: str,
    base: str = "untracked",
    resamples: int = 2000,
    level: float = 0.95,
) -> tuple[float, float]:
    """A bootstrap interval of :func:`ratio_total`, seeded, so one run prints one interval.

    Rounds (each a pair of adjacent blocks) are resampled in runs of consecutive rounds
    (a circular moving-block bootstrap, runs of about n**(1/3) rounds): a shared
    machine's slow spells last several rounds, and resampling rounds one by one would
    treat them as independent and print too narrow an interval."""
    import random

    pairs = list(zip(times[name], times[base], strict=True))
    n = len(pairs)
    run = max(1, round(n ** (1 / 3)))
    rng = random.Random(0)
    stats = []
    for _ in range(resamples):
        num = den = 0.0
        for _ in range(-(-n // run)):
            start = rng.randrange(n)
            for k in range(run):
                a, b = pairs[(start + k) % n]
                num += a
                den += b
        stats.append(num / den)
    stats.sort()
    lo = stats[int((1 - level) / 2 * resamples)]
    hi = stats[int((1 + level) / 2 * resamples) - 1]
    return lo, hi


def ratio_iqr(times: dict[str, list[float]], name: str, base: str = "untracked") -> float:
    rs = [a / b for a, b in zip(times[name], times[base], strict=True)]
    if len(rs) < 4:
        return float("nan")
    q = statistics.quantiles(rs, n=4)
    return q[2] - q[0]


def print_breakdown(
    api: StreamAPI,
    envs: list[Env],
    times: dict[str, list[float]],
    stats: dict[str, dict[str, int]],
    args: Any,
    fixed: bool,
) -> None:
    """Where always-on's overhead goes, from the ablation variants of the same run."""

    def ov(name: str) -> float:
        return 100 * (ratio_median(times, name) - 1)

    def ovt(name: str) -> float:
        return 100 * (ratio_total(times, name) - 1)

    n_ops = ops_per_step(envs, api, fixed)
    ao = stats.get("always-on", {"steps": 1, "windows": 0, "ops": 0})
    cover = ao["ops"] / max(1, ao["steps"] * n_ops)  # fraction of ops inside windows
    win_full = ovt("windows") - ovt("hooks")  # every op in a window, above the hooks
    frees, us_free = count_late_frees(api, envs, args.sample, max(200, 4 * args.block))
    step_us = statistics.median(times["untracked"]) * 1e6
    print(
        f"breakdown of always-on's overhead (sample={args.sample:g}; % of the untracked "
        f"step, medians of this run's per-round ratios, total-over-total in brackets):"
    )
    print(
        f"  patched methods idle (no tracker)   {ov('patches'):+5.1f}% [{ovt('patches'):+5.1f}%]"
        "   every patch installed, each call's early exit"
    )
    print(
        f"  .item() wrapper alone               {ov('item-wrap'):+5.1f}% "
        f"[{ovt('item-wrap'):+5.1f}%]"
    )
    print(
        f"  hooks (sample=0)                    {ov('hooks'):+5.1f}% [{ovt('hooks'):+5.1f}%]"
        "   record_stream, waits, syncs, .item() fed to the engine; no window"
    )
    print(
        f"  windows, measured                   {ovt('always-on') - ovt('hooks'):+5.1f}%"
        "   always-on minus hooks (total over total)"
    )
    print(
        f"  windows, modelled                   {cover * win_full:+5.1f}%   "
        f"{100 * cover:.2f}% of the {n_ops} ops/step in windows "
        f"({ao['windows'] / max(1, ao['steps']):.4f} windows/step) x {win_full:+.0f}% for "
        "every op in a window"
    )
    print(
        f"  weakref registration                {100 * frees * us_free / step_us:+5.2f}%   "
        f"{frees:.3f} frees/step of window-allocated storages outside windows, "
        f"{us_free:.1f} us each"
    )
    print(
        "  (the untracked loop calls record_stream too: on a virtual stream it is "
        "esper_lifetimes' own no-op, which the hooks replace)"
    )


# ---------------------------------------------------------------------------------------
# 2. Detection


@dataclass
class Detection:
    rate: float
    seeds: int
    max_steps: int
    steps: list[int | None]  # per seed: the step that first reported it, or None

    @property
    def found(self) -> list[int]:
        return [s for s in self.steps if s is not None]

    @property
    def fraction(self) -> float:
        return len(self.found) / len(self.steps) if self.steps else 0.0


def detect(api: StreamAPI, envs: list[Env], rate: float, seeds: int, max_steps: int) -> Detection:
    """For each seed, the planted loop under always-on tracking until the hazard is
    reported or ``max_steps`` steps have run."""
    steps: list[int | None] = []
    for seed in range(seeds):
        found = None
        with AlwaysOn(rate, seed) as tr:
            base = matched_count(tr)
            for i in range(1, max_steps + 1):
                train_step(envs, api, fixed=False)
                if matched_count(tr) > base:
                    found = i
                    break
        steps.append(found)
    return Detection(rate, seeds, max_steps, steps)


def detection_line(d: Detection) -> str:
    found = d.found
    med = statistics.median(found) if found else float("nan")
    p95 = percentile([float(x) for x in found], 95)
    return (
        f"detection (always-on, sample={d.rate:g}): {len(found)}/{len(d.steps)} seeds "
        f"= {100 * d.fraction:.1f}% within {d.max_steps} steps; steps to detection "
        f"median {med:g}, p95 {p95:g}   (target >= {100 * TARGET_DETECTION:g}%) "
        f"{verdict(d.fraction >= TARGET_DETECTION)}"
    )


# ---------------------------------------------------------------------------------------
# 3. False errors


def false_errors(
    api: StreamAPI, make: Callable[[], list[Env]], ctx: Any, steps: int
) -> tuple[int, list[Any]]:
    """Error-severity hazards over ``steps`` steps of the fixed loop (the envs are made
    inside the tracked region)."""
    with ctx as tr:
        envs = make()
        for _ in range(steps):
            train_step(envs, api, fixed=True)
        errors = list(tr.errors)
    return len(errors), errors


# ---------------------------------------------------------------------------------------
# 4. Memory


COUNTS = ("live_storages", "freed_tracked", "events", "sites", "hazards")


def engine_counts(tr: Any) -> dict[str, int]:
    """The engine's bounded state, plus the tracker's own records of live storages."""
    out: dict[str, int] = {}
    eng = engine_of(tr)
    if eng is not None:
        st = eng.stats()
        for k in COUNTS:
            if k in st:
                out[k] = int(st[k])
    recs = getattr(tr, "_recs", None)
    if isinstance(recs, dict):
        out["tracker_records"] = len(recs)
    return out


def memory_snapshot(tr: Any) -> dict[str, Any]:
    gc.collect()
    snap: dict[str, Any] = dict(engine_counts(tr))
    snap["rss"] = rss_bytes()
    snap["gc_objects"] = len(gc.get_objects())
    snap["windows_opened"] = getattr(tr, "windows_opened", None)
    return snap


@dataclass
class MemoryRun:
    first: int  # step of the first measurement (10,000 by default)
    last: int  # step of the last (--steps-memory)
    a: dict[str, Any]  # snapshot at first
    b: dict[str, Any]  # snapshot at last
    early_max: dict[str, int]  # high-water marks of the counts over (first/2, first]
    late_max: dict[str, int]  # ... over (last - first/2, last]
    seconds: float


def memory_run(
    api: StreamAPI, envs: list[Env], steps: int, rate: float, progress: bool
) -> MemoryRun:
    """``steps`` steps of the planted loop under always-on tracking. The engine's counts
    depend on whether a window is open at the moment they are read, so besides the two
    snapshots the counts are read every ``first/20`` steps, and the high-water marks of
    the last ``first/2`` steps before each snapshot are compared."""
    first = min(10_000, max(2, steps // 10))
    every = max(1, first // 20)
    half = max(1, first // 2)
    early: dict[str, int] = {}
    late: dict[str, int] = {}
    a: dict[str, Any] = {}
    t0 = time.monotonic()
    with AlwaysOn(rate, 0) as tr:
        for i in range(1, steps + 1):
            train_step(envs, api, fixed=False)
            if i % every == 0 or i in (first, steps):
                for hw, lo, hi in ((early, first - half, first), (late, steps - half, steps)):
                    if lo < i <= hi:
                        for k, v in engine_counts(tr).items():
                            hw[k] = max(hw.get(k, v), v)
            if i == first:
                a = memory_snapshot(tr)
            if progress and i % 10_000 == 0:
                el = time.monotonic() - t0
                print(f"  ... memory run: {i} steps, {el:.0f} s", file=sys.stderr, flush=True)
        b = memory_snapshot(tr)
    return MemoryRun(first, steps, a, b, early, late, time.monotonic() - t0)


def memory_lines(m: MemoryRun, judge: bool = True) -> tuple[list[str], bool]:
    lines = [
        f"memory (always-on, planted loop, {m.last} steps in {m.seconds:.0f} s): "
        f"at {m.first} steps -> at {m.last} steps"
    ]
    grew = []
    for k in (*COUNTS, "tracker_records", "gc_objects", "windows_opened"):
        if k not in m.a and k not in m.b:
            continue
        va, vb = m.a.get(k), m.b.get(k)
        delta = vb - va if isinstance(va, int) and isinstance(vb, int) else None
        line = f"  {k:16s} {va!s:>10} -> {vb!s:>10}   growth {delta!s}"
        if k in m.early_max or k in m.late_max:
            ea, la = m.early_max.get(k, 0), m.late_max.get(k, 0)
            line += f"   (high-water {ea} -> {la})"
            # flat: the late high-water mark within 5% (+16) of the early one
            if la > ea + 16 + 0.05 * ea:
                grew.append(k)
        lines.append(line)
    mib = 1 << 20
    rss_growth = m.b["rss"] - m.a["rss"]
    lines.append(
        f"  {'process RSS':16s} {m.a['rss'] / mib:9.1f}M -> {m.b['rss'] / mib:9.1f}M   "
        f"growth {rss_growth / mib:+.1f} MiB"
    )
    flat = not grew and rss_growth < 8 * mib
    why = f" (grew: {', '.join(grew)})" if grew else ""
    lines.append(
        f"memory growth {m.first} -> {m.last} steps: RSS {rss_growth / mib:+.1f} MiB, "
        f"engine/tracker counts {'flat' if not grew else 'growing'}{why}   "
        f"(target: flat: high-water marks within 5%+16, RSS < 8 MiB) "
        + (verdict(flat) if judge else "(too few steps to judge)")
    )
    return lines, flat or not judge


# ---------------------------------------------------------------------------------------
# Main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--hazard",
        choices=("planted", "fixed"),
        default="planted",
        help="the loop timed in the step-time section (default: planted)",
    )
    ap.add_argument("--envs", type=int, default=4)
    ap.add_argument("--sample", type=float, default=DEFAULT_SAMPLE, help="always-on sample rate")
    ap.add_argument(
        "--no-ablation",
        dest="ablation",
        action="store_false",
        help="time untracked, always-on and full only (no breakdown)",
    )
    ap.add_argument("--rounds", type=int, default=101, help="timing rounds")
    ap.add_argument(
        "--full-block-div",
        type=int,
        default=5,
        help="full tracking's block is --block divided by this (5)",
    )
    ap.add_argument("--block", type=int, default=50, help="steps per timed block")
    ap.add_argument("--seeds", type=int, default=100, help="detection seeds")
    ap.add_argument("--max-steps", type=int, default=1000, help="detection horizon")
    ap.add_argument("--steps-false", type=int, default=2000, help="fixed-loop steps")
    ap.add_argument("--steps-memory", type=int, default=100_000)
    ap.add_argument("--curve", action="store_true", help="overhead/detection per rate")
    ap.add_argument("--curve-rates", default="0.002,0.005,0.01,0.02,0.05")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few steps/seeds")
    ap.add_argument("--skip", default="", help="comma list of: time,detect,false,memory")
    ap.add_argument("--cpu", action="store_true", help="virtual streams even with a GPU")
    ap.add_argument("--log", action="store_true", help="keep esper_lifetimes' hazard log")
    ap.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when detection, false errors or memory miss the target",
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 3)
        args.block = min(args.block, 5)
        args.seeds = min(args.seeds, 5)
        args.max_steps = min(args.max_steps, 1000)
        args.steps_false = min(args.steps_false, 40)
        args.steps_memory = min(args.steps_memory, 200)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    if not args.log:
        # the always-on tracker logs every new hazard; the planted ones are expected
        logging.getLogger("esper_lifetimes").addHandler(logging.NullHandler())
        logging.getLogger("esper_lifetimes").propagate = False
    torch.set_num_threads(1)
    cuda = torch.cuda.is_available() and not args.cpu
    api = StreamAPI(cuda)
    envs = make_envs(api, args.envs)
    fixed = args.hazard == "fixed"
    clock_name = "wall time" if cuda else "process CPU time"
    print(
        f"training loop: {args.envs} envs on {'CUDA' if cuda else 'virtual'} streams, "
        f"MLP {WIDTH}-{WIDTH}-{WIDTH}-{OUT}, {PER_ENV} rows/env, SGD; "
        f"torch {torch.__version__}, python {sys.version.split()[0]}"
    )
    no_ao = always_on_support()
    if no_ao:
        print(f"always-on: SKIPPED ({no_ao})")
    elif isinstance(esper_lifetimes.always_on, types.ModuleType):
        print(
            "note: esper_lifetimes.always_on is the submodule, not the function "
            "(import-order shadowing); using esper_lifetimes.always_on.always_on"
        )
    failed: list[str] = []

    # 1. step time ---------------------------------------------------------------------
    if "time" not in skip:
        variants: dict[str, Callable[[], Any]] = {"untracked": Untracked}
        no_abl = no_ao or ablation_support()
        if not no_ao:
            variants["always-on"] = lambda: AlwaysOn(args.sample, None)
        if args.ablation and not no_abl:
            variants["patches"] = PatchesOnly
            variants["item-wrap"] = ItemOnly
            variants["hooks"] = lambda: AlwaysOn(0.0, None)
            variants["windows"] = lambda: AlwaysOn(1.0, None)
        variants["full"] = lambda: Full(api)
        stats: dict[str, dict[str, int]] = {}
        # Full tracking is several times slower and needs no 2% precision: a shorter
        # block per round leaves the run's time to the rounds that decide the target.
        full_block = max(1, args.block // args.full_block_div)
        times = time_variants(
            api, envs, variants, args.rounds, args.block, fixed, stats, {"full": full_block}
        )
        print(
            f"step time ({args.hazard} loop, {clock_name}, median of {args.rounds} "
            f"interleaved rounds x {args.block} steps ({full_block} for full); ratios: "
            "median of per-round ratios and total over total):"
        )
        labels = {
            "patches": "ablation: patched methods installed, no tracker (idle wrappers)",
            "item-wrap": "ablation: the .item() wrapper alone, no tracker",
            "hooks": "ablation: hooks only (always-on, sample=0: no window)",
            "windows": "ablation: every stretch a window (always-on, sample=1)",
        }
        for name in variants:
            med = statistics.median(times[name]) * 1e3
            line = f"  {name:10s} {med:8.3f} ms/step"
            if name != "untracked":
                r = ratio_median(times, name)
                rt = ratio_total(times, name)
                line += f"   {r:.3f}x untracked (total {rt:.3f}x"
                if args.rounds >= 4:
                    line += f", IQR {ratio_iqr(times, name):.3f}"
                line += ")"
                if name == "always-on":
                    # the judged figure: total over total counts every block's windows
                    line += (
                        f"   overhead {100 * (rt - 1):+.1f}% (target <= "
                        f"{100 * (TARGET_OVERHEAD - 1):.0f}%) {verdict(rt <= TARGET_OVERHEAD)}"
                    )
                    if args.rounds >= 4:
                        lo, hi = ratio_total_interval(times, name)
                        line += f", 95% interval {100 * (lo - 1):+.1f}%..{100 * (hi - 1):+.1f}%"
                else:
                    line += f"   overhead {100 * (rt - 1):+.1f}%"
                if name in labels:
                    line += f"   [{labels[name]}]"
            print(line)
        if no_ao:
            print("  always-on  SKIPPED")
        elif args.ablation and not no_abl:
            print_breakdown(api, envs, times, stats, args, fixed)
        elif args.ablation:
            print(f"breakdown: SKIPPED ({no_abl})")

    # 2. detection ---------------------------------------------------------------------
    if "detect" not in skip:
        with Full(api) as tr:
            train_step(envs, api, fixed=False)
            full_found = matched_count(tr) > 0
        print(
            f"detection (full tracking): planted hazard reported in step 1: "
            f"{'yes' if full_found else 'NO'}"
        )
        if not full_found:
            failed.append("full-tracking detection")
        if no_ao:
            print("detection (always-on): SKIPPED")
        else:
            d = detect(api, envs, args.sample, args.seeds, args.max_steps)
            print(detection_line(d))
            if d.fraction < TARGET_DETECTION:
                failed.append("detection")

    # 3. false errors ------------------------------------------------------------------
    if "false" not in skip:
        runs: list[tuple[str, Callable[[], Any], bool]] = []
        if not no_ao:
            runs.append(
                (f"always-on (sample={args.sample:g})", lambda: AlwaysOn(args.sample, 0), False)
            )
            runs.append(("always-on (sample=1)", lambda: AlwaysOn(1.0, 0), False))
        runs.append(("full tracking", lambda: Full(api), False))
        if not no_ao:
            runs.append(("always-on (sample=1)", lambda: AlwaysOn(1.0, 0), True))
        runs.append(("full tracking", lambda: Full(api), True))
        for label, ctx, carry in runs:
            if carry:
                make = lambda: make_envs(api, args.envs, seed=1, carry=True)  # noqa: E731
                loop = "fixed loop + carried env state"
            else:
                make = lambda: envs  # noqa: E731
                loop = "fixed loop"
            n, errors = false_errors(api, make, ctx(), args.steps_false)
            seen = sum(h.count for h in errors)
            print(
                f"false errors ({label}, {loop}, {args.steps_false} steps): {n}"
                + (f" ({seen} occurrences)" if n else "")
                + f"   (target 0) {verdict(n == 0)}"
            )
            if n:
                failed.append(f"false errors under {label}, {loop}")
                report = esper_lifetimes.tracking.format_report(errors)
                print("    " + report.replace("\n", "\n    "))
        if no_ao:
            print("false errors (always-on): SKIPPED")

    # 4. memory ------------------------------------------------------------------------
    if "memory" not in skip:
        if no_ao:
            print("memory (always-on): SKIPPED")
        else:
            m = memory_run(api, envs, args.steps_memory, args.sample, progress=not args.quick)
            lines, flat = memory_lines(m, judge=not args.quick)
            print("\n".join(lines))
            if not flat:
                failed.append("memory")

    # 5. the trade-off curve -----------------------------------------------------------
    if args.curve:
        if no_ao:
            print("curve: SKIPPED (no always-on mode)")
        else:
            rates = [float(r) for r in args.curve_rates.split(",") if r.strip()]
            cv: dict[str, Callable[[], Any]] = {"untracked": Untracked}
            for r in rates:
                cv[f"{r:g}"] = lambda r=r: AlwaysOn(r, None)
            times = time_variants(api, envs, cv, args.rounds, args.block, fixed)
            print(
                f"curve (overhead: median of {args.rounds} rounds x {args.block} steps; "
                f"detection: {args.seeds} seeds, <= {args.max_steps} steps):"
            )
            print("  sample   overhead   detected   median   p95 steps")
            for r in rates:
                ov = ratio_median(times, f"{r:g}") - 1
                d = detect(api, envs, r, args.seeds, args.max_steps)
                found = [float(x) for x in d.found]
                med = statistics.median(found) if found else float("nan")
                print(
                    f"  {r:<7g} {100 * ov:+7.1f}%   {100 * d.fraction:6.1f}%   {med:6g}   "
                    f"{percentile(found, 95):6g}"
                )

    if failed:
        print(f"missed: {', '.join(failed)}")
    return 1 if (failed and args.strict) else 0


if __name__ == "__main__":
    sys.exit(main())
