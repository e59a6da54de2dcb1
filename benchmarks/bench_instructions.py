"""Instructions per step: the overheads of the timing benchmarks, counted instead of timed.

The timing benchmarks run on a shared machine whose speed moves by 1.5x between minutes;
an A/A comparison of two identical variants spreads by +-3%, which is wider than the 2%
the always-on target judges. This benchmark runs the same loops under valgrind's
callgrind and prints the instructions each variant executes per step: a count, not a
time, so it is the same from one run to the next (about 0.1% here) and other jobs on the
machine do not move it. Instructions are not time: a cache miss costs a hundred
instructions' worth and is not in the count, so ``--cache-sim`` also simulates the
caches and prints callgrind's cycle estimate, Ir + 10 x (L1 misses) + 100 x (last-level
misses). ``--branch-sim`` simulates branch prediction and prints the mispredicted
conditional and indirect branches per step (CPython's bytecode dispatch is an indirect
branch per instruction, which the count weighs like any other). Read them beside the
timed figures, not instead of them.

Each variant runs in its own process under ``valgrind --tool=callgrind
--instr-atstart=no``: importing torch is not instrumented (it is most of the run);
the child starts instrumentation with a client request, runs ``--warmup`` steps, zeroes
the counters, runs ``--steps`` steps, and dumps. The client requests are valgrind's
documented magic instruction sequence, run from a page of machine code (no compiler,
no headers); outside valgrind they do nothing. ``PYTHONHASHSEED=0`` and seeded
always-on windows make the runs repeatable.

Loops (``--loop``):

* ``training`` (default): ``bench_training_loop.py``'s vectorized 4-environment step,
  with its planted hazard (``--hazard fixed``: the clean loop), on virtual streams;
  variants untracked, the always-on ablations (patched methods
  idle, ``.item()`` wrapper alone, hooks with no window, every stretch a window),
  always-on at the default sample rate (seeded; ``--ao-steps`` steps, since a window
  opens about once per hundred steps), and full tracking. The always-on figure is also
  modelled from its parts: hooks plus the fraction of ops inside windows (counted
  natively over ``--cover-steps`` steps, same seed) times a window's extra per op.
* ``mlp``: ``bench_tracking.py``'s MLP step; variants untracked, the stock and the lean
  no-op modes, ``track()``; prints track()'s overhead over each no-op mode's (target
  <= 1.25x the stock mode's).
* ``engine``: ``bench_engine.py``'s synthetic trace (``--events`` events, 4 streams,
  1,000 live storages) through its drivers, one trace a step, each on a fresh engine
  (set-up not counted): the bulk ``replay``, one call per event and its no-op floor,
  one call per launch and its floor, and torch's sanitizer with its stack capture
  removed; prints instructions per event and the ratios ``bench_engine.py`` times (about
  2 minutes; the sanitizer is most of it).
* ``emulate``: ``bench_emulate.py``'s loop (``y = x * 2 + 1`` on 256 floats, 50 steps
  of two aten ops per counted step); variants untracked, its no-op function and dispatch
  modes, ``emulate_cuda()`` on ``device="cuda"`` tensors, ``track()`` on CPU tensors, and
  both; prints each one's instructions per op above untracked and what emulation adds to
  tracking.

    python benchmarks/bench_instructions.py                 # training loop, ~5 min
    python benchmarks/bench_instructions.py --loop mlp
    python benchmarks/bench_instructions.py --loop engine   # ~2 min
    python benchmarks/bench_instructions.py --cache-sim     # plus the cycle estimate
    python benchmarks/bench_instructions.py --loop mlp --branch-sim  # plus mispredictions (not --loop engine)

Needs valgrind (``apt-get install valgrind``); x86-64 Linux only.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import mmap
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))

# ---------------------------------------------------------------------------------------
# Valgrind client requests without valgrind.h: the amd64 "special instruction" sequence
# (four rotations of rdi by 3, 13, 61 and 51 bits, 128 in all, so a no-op natively, then
# xchg rbx, rbx) asks valgrind to serve the request whose arguments rax points to; the
# answer comes back in rdx, which holds the default (0) when not under valgrind.

_CODE = bytes.fromhex(
    "4889f8"  # mov rax, rdi        the argument block
    "31d2"  # xor edx, edx          the default answer
    "48c1c703"  # rol rdi, 3
    "48c1c70d"  # rol rdi, 13
    "48c1c73d"  # rol rdi, 61
    "48c1c733"  # rol rdi, 51
    "4887db"  # xchg rbx, rbx       the request
    "4889d0"  # mov rax, rdx
    "c3"  # ret
)
_CT_BASE = (ord("C") << 24) | (ord("T") << 16)  # VG_USERREQ_TOOL_BASE('C', 'T')
DUMP_STATS_AT = _CT_BASE + 3
ZERO_STATS = _CT_BASE + 1
START_INSTRUMENTATION = _CT_BASE + 4
STOP_INSTRUMENTATION = _CT_BASE + 5
RUNNING_ON_VALGRIND = 0x1001


class Requests:
    """Callgrind's client requests (callgrind.h), callable from Python."""

    def __init__(self) -> None:
        if platform.machine() not in ("x86_64", "AMD64"):
            raise RuntimeError(f"client requests are written for x86-64, not {platform.machine()}")
        self._page = mmap.mmap(
            -1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
        )
        self._page.write(_CODE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self._page))
        self._fn = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p)(addr)
        self._keep: list[Any] = []

    def __call__(self, request: int, arg: int = 0) -> int:
        block = (ctypes.c_uint64 * 6)(request, arg, 0, 0, 0, 0)
        return int(self._fn(ctypes.addressof(block)))

    def on_valgrind(self) -> bool:
        return self(RUNNING_ON_VALGRIND) > 0

    def dump(self, name: str) -> None:
        buf = ctypes.create_string_buffer(name.encode())
        self._keep.append(buf)
        self(DUMP_STATS_AT, ctypes.addressof(buf))


# ---------------------------------------------------------------------------------------
# The child: one variant, counted


def _training_variants(sample: float) -> dict[str, Any]:
    import bench_training_loop as b

    api = b.StreamAPI(False)
    return {
        "untracked": b.Untracked,
        "patches idle": b.PatchesOnly,
        "item wrapper": b.ItemOnly,
        "hooks": lambda: b.AlwaysOn(0.0, 0),
        "windows": lambda: b.AlwaysOn(1.0, 0),
        "always-on": lambda: b.AlwaysOn(sample, 0),
        "full": lambda: b.Full(api),
    }


def _mlp_variants() -> dict[str, Any]:
    import bench_tracking as bt
    import esper_lifetimes

    out = {
        "untracked": bt._Null,
        "stock no-op mode": bt.StockNoop,
        "lean no-op mode": bt.LeanNoop,
        "track()": lambda: esper_lifetimes.track("collect", cpu="device"),
    }
    # bench_tracking's in-place ablations: track() cut short in its own mode's source
    for name, cut in ABLATIONS.items():
        f = bt.ablated(*cut[:1], **cut[1])
        if f is not None:
            out[name] = f
    return out


def _emulate_variants() -> dict[str, Any]:
    """bench_emulate.py's configurations as context managers, each yielding the device
    its loop's tensors live on."""
    import contextlib

    import bench_emulate as be
    import esper_lifetimes
    from esper_lifetimes.emulate import emulate_cuda

    @contextlib.contextmanager
    def config(emulate: bool, track: bool, noop: bool = False) -> Any:
        with contextlib.ExitStack() as stack:
            if noop:
                stack.enter_context(be._NoOpDispatch())
                stack.enter_context(be._NoOpFn())
            if emulate:
                stack.enter_context(emulate_cuda())
            if track:
                stack.enter_context(esper_lifetimes.track("collect"))
            yield "cuda" if emulate else "cpu"

    return {
        "untracked": lambda: config(False, False),
        "no-op modes": lambda: config(False, False, noop=True),
        "emulated": lambda: config(True, False),
        "tracked": lambda: config(False, True),
        "emulated+tracked": lambda: config(True, True),
    }


# the engine loop's variants: bench_engine.py's labels, and which of its drivers runs
ENGINE_VARIANTS = {
    "bulk replay": "b",
    "call per event": "a",
    "floor per event": "d",
    "call per launch": "a_l",
    "floor per launch": "d_l",
    "sanitizer": "c_fast",
}


def _engine_step(variant: str, trace: Any) -> Any:
    """A prepared run of one engine variant over ``trace`` (set-up done here, uncounted):
    a callable that drives the whole trace once."""
    import bench_engine as be
    from esper_lifetimes import Engine

    kind = ENGINE_VARIANTS[variant]
    if kind == "c_fast":
        import torch.cuda._sanitizer as sanitizer

        handler = be.new_sanitizer(trace, sanitizer)
        calls = be.sanitizer_calls(trace, handler)

        def run() -> None:
            with be.no_stack_capture(sanitizer):
                be.drive_sanitizer(calls)

        return run
    e = Engine()
    if kind in ("a", "b", "a_l"):
        e.replay(trace.prefill)
    if kind == "b":
        return lambda: be.drive_bulk(trace.work, e)
    if kind in ("a_l", "d_l"):
        rows = be.launch_rows(trace)
        return lambda: be.drive_launches(rows, e, kind == "d_l")
    rows = list(map(tuple, trace.work.tolist()))
    if kind == "d":
        return lambda: be.drive_noop(rows, e._noop)
    return lambda: be.drive_calls(rows, e)


EMULATE_STEPS = 50  # bench_emulate.py's loop steps per counted step: 100 aten ops

ABLATIONS: dict[str, tuple[Any, dict[str, Any]]] = {
    "head only": ("tr = self.tracker", {}),
    "head+site": ("if tr._cpu_device:", {"in_try": True}),
    "no input access": (None, {"drop": "access(ref.ptr, nb, vh, w, site)"}),
}


def child(args: argparse.Namespace) -> int:
    req = Requests()
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(HERE, "..", "python"))
    info: dict[str, Any] = {"on_valgrind": req.on_valgrind()}
    # the engine loop needs torch only for the sanitizer (its import is most of a run)
    if args.loop != "engine" or ENGINE_VARIANTS.get(args.variant) == "c_fast":
        import torch

        torch.set_num_threads(1)
    if args.loop == "engine":
        import bench_engine as be

        trace = be.generate(args.events, 4, 1_000, 0)
        info["ops_per_step"] = len(trace.work)
        req(START_INSTRUMENTATION)
        for _ in range(args.warmup):
            _engine_step(args.variant, trace)()
        # every counted step drives the trace on its own fresh engine, prepared here
        runs = [_engine_step(args.variant, trace) for _ in range(args.steps)]
        gc.collect()
        req(ZERO_STATS)
        for run in runs:
            run()
        req.dump("steps")
        req(STOP_INSTRUMENTATION)
        with open(args.out, "w") as f:
            json.dump(info, f)
        return 0
    if args.loop == "training":
        import bench_training_loop as b

        api = b.StreamAPI(False)
        envs = b.make_envs(api, 4)
        ctx = _training_variants(args.sample)[args.variant]
        fixed = args.hazard == "fixed"
        # as bench_training_loop.py does without --log: hazards are counted, not printed
        logging.getLogger("esper_lifetimes").addHandler(logging.NullHandler())
        logging.getLogger("esper_lifetimes").propagate = False

        def step() -> None:
            b.train_step(envs, api, fixed)

        info["ops_per_step"] = b.ops_per_step(envs, api, fixed)
    elif args.loop == "emulate":
        import bench_emulate as bem
        import torch

        ctx = _emulate_variants()[args.variant]
        info["ops_per_step"] = 2 * EMULATE_STEPS
        with ctx() as device:
            x = torch.randn(bem.N, device=device)
            req(START_INSTRUMENTATION)
            for _ in range(args.warmup):
                bem._loop(x, EMULATE_STEPS)
            gc.collect()
            req(ZERO_STATS)
            for _ in range(args.steps):
                bem._loop(x, EMULATE_STEPS)
            req.dump("steps")
            req(STOP_INSTRUMENTATION)
        with open(args.out, "w") as f:
            json.dump(info, f)
        return 0
    else:
        import bench_tracking as bt

        parts = bt.make(64, 3, 32)
        ctx = _mlp_variants()[args.variant]

        def step() -> None:
            bt.step(*parts)

        counter = bt.Counter()
        with counter:
            bt.step(*parts)
        info["ops_per_step"] = counter.n
    with ctx() as tr:
        req(START_INSTRUMENTATION)
        for _ in range(args.warmup):
            step()
        opened0 = getattr(tr, "windows_opened", None)
        checked0 = tr.ops_checked() if hasattr(tr, "ops_checked") else None
        # as the timing benchmarks do before each block: a full collection, so that the
        # collector's generations start empty and its passes fall at the same points
        gc.collect()
        req(ZERO_STATS)
        for _ in range(args.steps):
            step()
        req.dump("steps")
        req(STOP_INSTRUMENTATION)
        if opened0 is not None:
            info["windows"] = tr.windows_opened - opened0
        if checked0 is not None:
            info["ops_in_windows"] = tr.ops_checked() - checked0
    with open(args.out, "w") as f:
        json.dump(info, f)
    return 0


def cover(sample: float, steps: int, fixed: bool) -> tuple[float, float]:
    """Natively, with the children's seed: the fraction of ops always-on checks inside
    windows, and windows per step, over ``steps`` steps from the tracker's start."""
    import bench_training_loop as b
    import torch

    torch.set_num_threads(1)
    api = b.StreamAPI(False)
    envs = b.make_envs(api, 4)
    n_ops = b.ops_per_step(envs, api, fixed)
    logging.getLogger("esper_lifetimes").addHandler(logging.NullHandler())
    logging.getLogger("esper_lifetimes").propagate = False
    with b.AlwaysOn(sample, 0) as tr:
        for _ in range(steps):
            b.train_step(envs, api, fixed)
        return tr.ops_checked() / (steps * n_ops), tr.windows_opened / steps


# ---------------------------------------------------------------------------------------
# The parent: one valgrind process per variant


def parse_dump(path: str) -> dict[str, int]:
    events: list[str] = []
    summary: list[int] = []
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
            elif line.startswith("summary:"):
                summary = [int(x) for x in line.split()[1:]]
    if not events or len(summary) != len(events):
        raise RuntimeError(f"{path}: no events/summary lines")
    return dict(zip(events, summary, strict=True))


def run_variant(args: argparse.Namespace, variant: str, tmp: str) -> dict[str, Any]:
    tag = variant.replace(" ", "_").replace("(", "").replace(")", "")
    out = os.path.join(tmp, f"{tag}.json")
    prefix = os.path.join(tmp, f"cg.{tag}")
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--cache-sim={'yes' if args.cache_sim else 'no'}",
        f"--branch-sim={'yes' if args.branch_sim else 'no'}",
        f"--callgrind-out-file={prefix}.%p",
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--loop",
        args.loop,
        "--variant",
        variant,
        "--steps",
        str(args.ao_steps if variant == "always-on" else args.steps),
        "--warmup",
        str(args.warmup),
        "--sample",
        str(args.sample),
        "--hazard",
        args.hazard,
        "--events",
        str(args.events),
        "--out",
        out,
    ]
    env = dict(os.environ, PYTHONHASHSEED="0")
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.monotonic() - t0
    dumps = [f for f in os.listdir(tmp) if f.startswith(f"cg.{tag}.") and f.endswith(".1")]
    if p.returncode != 0 or not dumps or not os.path.exists(out):
        tail = "\n".join((p.stdout + p.stderr).splitlines()[-15:])
        raise RuntimeError(f"variant {variant!r}: valgrind run failed (rc {p.returncode}):\n{tail}")
    with open(out) as f:
        info = json.load(f)
    if not info.get("on_valgrind"):
        raise RuntimeError(f"variant {variant!r}: the child did not see valgrind")
    info["counts"] = parse_dump(os.path.join(tmp, dumps[0]))
    info["seconds"] = took
    return info


def cycles(c: dict[str, int]) -> float:
    """Callgrind's cycle estimate: Ir + 10 x L1 misses + 100 x last-level misses."""
    l1 = c.get("I1mr", 0) + c.get("D1mr", 0) + c.get("D1mw", 0)
    ll = c.get("ILmr", 0) + c.get("DLmr", 0) + c.get("DLmw", 0)
    return c["Ir"] + 10 * l1 + 100 * ll


def mispredicts(c: dict[str, int]) -> int:
    """Mispredicted branches (``--branch-sim``): conditional plus indirect."""
    return c.get("Bcm", 0) + c.get("Bim", 0)


def print_engine(
    args: argparse.Namespace, names: list[str], res: dict[str, Any], took: float
) -> int:
    """The engine loop's table: instructions per event, and bench_engine.py's ratios."""
    n_events = res[names[0]]["ops_per_step"]
    print(
        f"engine loop: instructions per event (callgrind Ir), bench_engine.py's trace of "
        f"{n_events:,} events, 1,000 live storages, {args.steps} counted after {args.warmup} "
        f"warm-up; {took:.0f} s"
    )
    per = {v: res[v]["counts"]["Ir"] / (args.steps * n_events) for v in names}
    cyc = {v: cycles(res[v]["counts"]) / (args.steps * n_events) for v in names}
    for v in names:
        line = f"  {v:18s} {per[v]:10.0f} /event"
        if args.cache_sim:
            line += f"   est. cycles {cyc[v]:10.0f} /event"
        print(line)
    ratios = (
        (
            "sanitizer",
            "call per launch",
            "sanitizer (no stack capture) / one call per launch",
            ">= 20x",
        ),
        ("sanitizer", "call per event", "sanitizer (no stack capture) / one call per event", ""),
        ("call per event", "floor per event", "one call per event / its no-op floor", "<= 2x"),
        ("call per launch", "floor per launch", "one call per launch / its no-op floor", "<= 2x"),
    )
    for key, label in (("Ir", "instructions"), ("cyc", "est. cycles")):
        if key == "cyc" and not args.cache_sim:
            continue
        d = per if key == "Ir" else cyc
        for num, den, what, target in ratios:
            if num in d and den in d:
                tail = f" (target {target}, judged on time by bench_engine.py)" if target else ""
                print(f"  {label}: {what} = {d[num] / d[den]:.2f}x{tail}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loop", choices=("training", "mlp", "engine", "emulate"), default="training")
    ap.add_argument(
        "--events", type=int, default=20_000, help="events of the engine loop's trace (20000)"
    )
    ap.add_argument(
        "--hazard",
        choices=("planted", "fixed"),
        default="planted",
        help="the training loop with its planted hazard (bench_training_loop's default) or fixed",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="counted steps (training 40, mlp 10, engine 1, emulate 10)",
    )
    ap.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="steps before the counters are zeroed (5; engine 1)",
    )
    ap.add_argument("--ao-steps", type=int, default=400, help="counted steps of always-on")
    ap.add_argument("--variants", default=None, help="comma list (default: all of the loop)")
    ap.add_argument("--cache-sim", action="store_true", help="simulate caches: cycle estimate")
    ap.add_argument(
        "--branch-sim", action="store_true", help="simulate branch prediction: mispredictions"
    )
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--cover-steps", type=int, default=4000)
    ap.add_argument("--sample", type=float, default=None)
    ap.add_argument("--keep", metavar="DIR", help="keep the callgrind dumps in DIR")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.sample is None:
        sys.path.insert(0, os.path.join(HERE, "..", "python"))
        from esper_lifetimes.modes import DEFAULT_SAMPLE

        args.sample = DEFAULT_SAMPLE
    if args.steps is None:
        args.steps = {"training": 40, "mlp": 10, "engine": 1, "emulate": 10}[args.loop]
    if args.warmup is None:
        args.warmup = 1 if args.loop == "engine" else 5
    for name in ("steps", "events"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    if args.child:
        return child(args)
    if shutil.which("valgrind") is None:
        print("bench_instructions: needs valgrind on PATH (apt-get install valgrind)")
        return 2
    sys.path.insert(0, HERE)
    sys.path.insert(0, os.path.join(HERE, "..", "python"))
    if args.loop == "engine":
        every = list(ENGINE_VARIANTS)
    elif args.loop == "training":
        every = list(_training_variants(args.sample))
    elif args.loop == "emulate":
        every = list(_emulate_variants())
    else:
        every = list(_mlp_variants())
    names = every if args.variants is None else [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in names if v not in every]
    if unknown:
        print(f"bench_instructions: unknown variants {unknown}; the {args.loop} loop has {every}")
        return 2
    if "untracked" not in names and args.loop != "engine":
        names.insert(0, "untracked")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="esper-cg-") as tmp:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futs = {v: pool.submit(run_variant, args, v, tmp) for v in names}
            res = {v: f.result() for v, f in futs.items()}
        if args.keep:
            os.makedirs(args.keep, exist_ok=True)
            for f in os.listdir(tmp):
                shutil.copy(os.path.join(tmp, f), args.keep)
            print(f"callgrind dumps kept in {args.keep} (callgrind_annotate --inclusive=yes FILE)")
    if args.loop == "engine":
        return print_engine(args, names, res, time.monotonic() - t0)
    n_ops = res["untracked"]["ops_per_step"]
    base = res["untracked"]["counts"]
    loop = f"training loop ({args.hazard})" if args.loop == "training" else f"{args.loop} loop"
    print(
        f"{loop}: instructions per step (callgrind Ir), {args.steps} steps "
        + (f"({args.ao_steps} for always-on) " if "always-on" in names else "")
        + f"after {args.warmup} warm-up, {n_ops} aten ops/step; {time.monotonic() - t0:.0f} s"
    )

    def per_step(v: str, key: str = "Ir") -> float:
        c = res[v]["counts"]
        n = args.ao_steps if v == "always-on" else args.steps
        return (cycles(c) if key == "cyc" else c[key]) / n

    for v in names:
        ir = per_step(v)
        line = f"  {v:18s} {ir / 1e6:9.3f} M/step  {ir / n_ops:9.0f} /op"
        if v != "untracked":
            line += f"  {ir / per_step('untracked'):7.4f}x untracked ({100 * (ir / per_step('untracked') - 1):+.2f}%)"
        if args.cache_sim:
            cy = per_step(v, "cyc")
            line += f"   est. cycles {cy / 1e6:8.3f} M ({cy / per_step('untracked', 'cyc'):.4f}x)"
        if "windows" in res[v]:
            line += f"   [{res[v]['windows']} windows, {res[v]['ops_in_windows']} ops in them]"
        print(line)
    if args.cache_sim:
        keys = [k for k in base if k != "Ir"]
        print("  cache events per step: " + ", ".join(keys))
        for v in names:
            c = res[v]["counts"]
            n = args.ao_steps if v == "always-on" else args.steps
            print(f"    {v:18s} " + " ".join(f"{c[k] / n:10.0f}" for k in keys))
    if args.branch_sim:
        print("  mispredicted branches per step (simulated): conditional, indirect, both")
        mis_u = mispredicts(base) / args.steps
        for v in names:
            c = res[v]["counts"]
            n = args.ao_steps if v == "always-on" else args.steps
            line = f"    {v:18s} {c.get('Bcm', 0) / n:10.0f} {c.get('Bim', 0) / n:10.0f}"
            line += f" {mispredicts(c) / n:10.0f}"
            if v != "untracked" and mis_u:
                line += f"  {100 * (mispredicts(c) / n / mis_u - 1):+.2f}% untracked"
            print(line)
        if args.loop == "mlp" and {"stock no-op mode", "track()"} <= set(names):
            u = mispredicts(base) / args.steps
            t = mispredicts(res["track()"]["counts"]) / args.steps - u
            o = mispredicts(res["stock no-op mode"]["counts"]) / args.steps - u
            print(
                f"  mispredicted branches: track() overhead / stock no-op mode overhead = "
                f"{t / n_ops:.0f} / {o / n_ops:.0f} per op = {t / o:.3f}x"
            )
    if args.loop == "emulate" and {"emulated", "tracked", "emulated+tracked"} <= set(names):
        u = per_step("untracked")
        em, tk, both = (per_step(v) - u for v in ("emulated", "tracked", "emulated+tracked"))
        print(
            f"  per op above untracked: emulated {em / n_ops:.0f}, tracked {tk / n_ops:.0f}, "
            f"emulated+tracked {both / n_ops:.0f}; emulation on top of tracking "
            f"{(both - tk) / n_ops:.0f} ({(both + u) / (tk + u):.3f}x tracked alone)"
        )
    modelled = args.loop == "training" and {"hooks", "windows"} <= set(names)
    if modelled:
        frac, wps = cover(args.sample, args.cover_steps, args.hazard == "fixed")
    for key, label in (("Ir", "instructions"), ("cyc", "est. cycles")):
        if key == "cyc" and not args.cache_sim:
            continue
        if modelled:
            u, h, w = per_step("untracked", key), per_step("hooks", key), per_step("windows", key)
            model = (h - u + frac * (w - h)) / u
            line = (
                f"  model ({label}): hooks {100 * (h - u) / u:+.2f}% + {100 * frac:.3f}% of ops "
                f"in windows ({wps:.4f} windows/step over {args.cover_steps} steps, seed 0) x "
                f"{(w - h) / u:.2f}x the step for every op in one = {100 * model:+.2f}% "
                f"(target <= +2%)"
            )
            print(line)
        if args.loop == "mlp" and {"stock no-op mode", "lean no-op mode", "track()"} <= set(names):
            u = per_step("untracked", key)
            t = per_step("track()", key) - u
            for m in ("stock no-op mode", "lean no-op mode"):
                o = per_step(m, key) - u
                print(
                    f"  {label}: track() overhead / {m} overhead = {t / n_ops:.0f} / "
                    f"{o / n_ops:.0f} per op = {t / o:.3f}x (target <= 1.25x the stock mode's)"
                )
            if set(ABLATIONS) <= set(names):
                lean, stock = per_step("lean no-op mode", key), per_step("stock no-op mode", key)
                head = per_step("head only", key) - lean
                site = per_step("head+site", key) - per_step("head only", key)
                rest = per_step("track()", key) - per_step("head+site", key)
                acc = per_step("track()", key) - per_step("no input access", key)
                budget = 1.25 * (stock - u) - (lean - u)
                print(
                    f"  {label} per op above the lean mode: head {head / n_ops:.0f}, site "
                    f"{site / n_ops:.0f}, storages (inputs, fresh outputs, frees) "
                    f"{rest / n_ops:.0f}, of which the inputs' engine calls {acc / n_ops:.0f}; "
                    f"the 1.25x target leaves {budget / n_ops:.0f} for all of it"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
