"""Property tests: random traces through the Rust engine and the reference model agree.

Each generated program is a list of abstract operations. They are turned into concrete
engine calls as the trace goes, choosing live storages from the reference model's state,
so that most calls are valid and addresses are reused (a pool of a few small,
partly overlapping address slots). Besides single calls there are patterns that make
the interesting cases common:

* access / ordering-or-not / access on another stream;
* use / fix-or-not / free / reallocation;
* a deferred free: use on another stream, free, then an ordering (or none) *after* the
  free, then the next allocation on the allocation stream, or one on another stream
  only, or a flush, or nothing (the final flush judges it);
* an unwaited allocation: the allocation stream has work (a copy, a read, a freed
  temporary), an allocation or `adopt` on it, its fill or not, some ordering or none,
  then a use on another stream;
* copy against copy: two non-blocking copies over overlapping host bytes, on two
  streams or one, ordered or not, and sometimes the refill of P15;
* a prefetcher (P13/P18): batches allocated on a producer stream and read on the
  consumer, the previous batch freed after the next is allocated, record_stream at one
  site in some rounds, the producer waiting on the consumer (or a sync) in some rounds;
* reuse across streams with a virtual stream (not a reuse-race) and on one stream (still
  one).

A few calls are invalid on purpose. Every trace ends with `flush()`. Every call
goes to both implementations, and after each call the verdicts must agree:

* both accept the call, or both reject it (the engine with a `LifetimesError` of the
  class that matches the model's error);
* a rejected call leaves the engine's hazards and stats exactly as they were;
* the hazard lists are equal, field by field: hazards keep the order of the calls that
  found them, with the counts now reached; within one call the order is free
  (ENGINE-API.md does not fix it everywhere; test_engine_api.py pins the orders it does
  fix). Set ESPER_STRICT_ORDER=1 to demand the same order within a call too;
* at the end, the stats that the docs fix exactly (live storages, pending frees,
  streams, events, hazards) and hazard_count / error_count agree.

Which rules a run reached is in hypothesis's statistics
(`pytest --hypothesis-show-statistics tests/test_property.py`): the reference model counts
its rule branches (`ReferenceModel.rules`) and each trace reports them as events.

Some traces run the engine with every address and size scaled up (SCALES), to test
realistic sizes against the per-byte model. A failing example prints the concrete trace
as engine calls, ready to paste.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import hypothesis
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_model import (
    ModelError,
    ModelInvalidArgument,
    ModelUnknownStorage,
    ReferenceModel,
)

el = pytest.importorskip("esper_lifetimes")
Engine = el.Engine
LifetimesError = el.LifetimesError
InvalidArgumentError = el.InvalidArgumentError
UnknownStorageError = el.UnknownStorageError

STRICT_ORDER = os.environ.get("ESPER_STRICT_ORDER") == "1"

FIELDS = (
    "kind",
    "severity",
    "count",
    "ptr",
    "nbytes",
    "alloc_stream",
    "use_stream",
    "other_stream",
    "alloc_site",
    "use_site",
    "free_site",
    "other_site",
    "other_ptr",
    "other_nbytes",
    "live",
)

ERROR_CLASSES = {
    ModelInvalidArgument: InvalidArgumentError,
    ModelUnknownStorage: UnknownStorageError,
}

# Stream and event handles: small ones, and ones at the edges of the signed and unsigned
# 64-bit ranges (the API accepts both). Events deliberately reuse stream numbers: the two
# are separate name spaces.
STREAM_SETS = (
    (0, 1, 2, 3),
    (7, -3, (1 << 64) - 7, (1 << 40) + 5),
    tuple(range(10)),  # more streams than a small inline vector holds
)
EVENT_SETS = ((0, 1, 5), (-1, (1 << 63) + 2, 9))
SITES = (None, None, "a.py:1", "a.py:2", "b.py:7")

# Device address slots: UNIT-byte slots from BASE; a candidate allocation spans one or
# two slots, sometimes trimmed to an odd size, so reuse overlaps freed ranges fully or
# partly. Host buffers use the same numbers (host memory is a separate space).
BASE = 0x7F00_0000_0200
UNIT = 8
SLOTS = 5
ALLOC_CANDIDATES = tuple(
    (BASE + k * UNIT, ln * UNIT - trim)
    for k in range(SLOTS)
    for ln in (1, 2, 3)
    if k + ln <= SLOTS
    for trim in (0, 3)
)
HOST_CANDIDATES = tuple(
    (BASE + k * UNIT, ln * UNIT) for k in range(3) for ln in (1, 2) if k + ln <= 3
)
OUTSIDE = BASE + (SLOTS + 4) * UNIT  # never allocated

# The engine may also get every address and size scaled by a factor (offsets from BASE
# and sizes multiplied): the verdicts must not change, only the pointers and sizes in
# them. This tests realistic sizes against a per-byte model that only sees small ones.
# 4096: storages up to 96 KiB; 1 << 24: up to 384 MiB, so the engine's address index
# (rust/engine/addr.rs) sees every size tier and the ordered map past its last.
SCALES = (1, 1, 4096, 1 << 24)
# argument positions of (pointer, size) for the calls that take them
ADDRESS_ARGS = {
    "alloc": (0, 1),
    "adopt": (0, 1),
    "access": (0, 1),
    "record_stream": (0, None),
    "free": (0, None),
    "copy_to_host": (0, 1),
    "copy_from_host": (0, 1),
    "host_access": (0, 1),
    "host_release": (0, 1),
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def scale_ptr(p, k: int):
    return BASE + (p - BASE) * k if _is_int(p) and k != 1 else p


def scale_size(n, k: int):
    return n * k if _is_int(n) else n


def _scale_ranges(flat, k: int):
    out = [scale_ptr(v, k) if i % 2 == 0 else scale_size(v, k) for i, v in enumerate(flat)]
    return type(flat)(out)


def scale_args(method: str, args: tuple, k: int) -> tuple:
    if k != 1 and method == "launch":
        stream, reads, writes, *rest = args  # rest: the site, when rendering
        return (stream, _scale_ranges(reads, k), _scale_ranges(writes, k), *rest)
    if k == 1 or method not in ADDRESS_ARGS:
        return args
    pi, si = ADDRESS_ARGS[method]
    out = list(args)
    out[pi] = scale_ptr(out[pi], k)
    if si is not None:
        out[si] = scale_size(out[si], k)
    return tuple(out)


@dataclass(frozen=True)
class Call:
    method: str
    args: tuple
    site: object = None  # index into SITES, or a raw (bad) site value
    site_raw: bool = False
    interned: bool = False

    def engine_args(self, engine, scale: int = 1) -> tuple:
        args = scale_args(self.method, self.args, scale)
        if self.method in NO_SITE:
            return args
        site = self.site if self.site_raw else SITES[self.site]
        if isinstance(site, str) and self.interned:
            site = engine.intern(site)
        return (*args, site)

    def model_args(self) -> tuple:
        if self.method in NO_SITE:
            return self.args
        site = self.site if self.site_raw else SITES[self.site]
        return (*self.args, site)

    def render(self, scale: int = 1) -> str:
        args = scale_args(self.method, self.model_args(), scale)
        return f"e.{self.method}({', '.join(_fmt(a) for a in args)})"


NO_SITE = {
    "event_record",
    "event_wait",
    "stream_wait",
    "stream_synchronize",
    "event_synchronize",
    "device_synchronize",
    "stream_query",
    "event_query",
    "define_stream",
    "host_release",
    "flush",
    "forget_event",
}


def _fmt(v) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v >= BASE - 0x1000:
        return hex(v)
    return repr(v)


# ----------------------------------------------------------------- generation

# "nop" comes first: shrinking moves ops towards it, so that a minimal failing trace
# shows only the calls that matter.
GOOD_KINDS = (
    ["nop"]
    + ["alloc"] * 5
    + ["access"] * 8
    + ["free"] * 4
    + ["record"] * 2
    + ["event_record"] * 2
    + ["event_wait"] * 2
    + ["stream_wait"] * 3
    + ["stream_sync", "event_sync", "device_sync", "stream_query", "event_query", "define"]
    + ["copy_to_host", "copy_from_host", "host_access", "host_access", "host_release"]
    + ["hb"] * 3
    + ["life"] * 3
    + ["adopt", "flush", "flush", "launch", "launch", "forget_event"]
    + ["deferred"] * 4
    + ["unwaited"] * 3
    + ["copies"] * 2
    + ["prefetch", "vreuse"]
)
BAD_KIND = "bad"


def op_strategy(bad_weight: int):
    return st.tuples(
        st.sampled_from(GOOD_KINDS + [BAD_KIND] * bad_weight),
        st.integers(0, 31),
        st.integers(0, 31),
        st.integers(0, 31),
        st.integers(0, 31),
        st.booleans(),
        st.integers(0, len(SITES) - 1),
        st.booleans(),
        st.integers(0, 4095),  # more choices for the patterns
    )


@st.composite
def programs(draw, bad_weight: int = 1, min_ops: int = 8, max_ops: int = 40):
    streams = draw(st.sampled_from(STREAM_SETS))
    events = draw(st.sampled_from(EVENT_SETS))
    # Which streams are virtual, and whether they are declared before the first op
    # (otherwise a `define` op declares them when it comes up).
    virtual = draw(st.lists(st.sampled_from(streams), max_size=2, unique=True))
    declare_first = draw(st.booleans())
    ops = draw(st.lists(op_strategy(bad_weight), min_size=min_ops, max_size=max_ops))
    scale = draw(st.sampled_from(SCALES))
    return streams, events, tuple(virtual), declare_first, ops, scale


def _live_storages(model: ReferenceModel) -> list[tuple[int, int]]:
    return sorted((s.base, s.nbytes) for s in model.storages.values())


def _overlaps(a, an, b, bn) -> bool:
    return a < b + bn and b < a + an


def concretize(op, model: ReferenceModel, streams, events, virtual) -> Call | list[Call] | None:
    """Turn one abstract op into concrete call(s) against the model's current state."""
    kind, i0, i1, i2, i3, flag, site, interned, _ = op
    live = _live_storages(model)
    stream = streams[i1 % len(streams)]
    event = events[i2 % len(events)]

    def call(method, *args, site_value=site, raw=False):
        return Call(method, args, site_value, raw, interned)

    if kind == "nop":
        return None
    if kind == "flush":
        return call("flush")
    if kind in ("alloc", "adopt"):
        free = _free_slots(live)
        if not free:  # the pool is full: free something instead
            return call("free", live[i0 % len(live)][0])
        ptr, n = free[i0 % len(free)]
        return call(kind, ptr, n, stream)
    if kind == "forget_event":
        return call("forget_event", event)
    if kind in ("access", "free", "record", "hb", "life", "deferred", "launch") and not live:
        ptr, n = ALLOC_CANDIDATES[i0 % len(ALLOC_CANDIDATES)]  # allocate instead
        return call("alloc", ptr, n, stream)
    if kind in ("unwaited", "prefetch", "vreuse") and not _free_slots(live):
        return call("free", live[i0 % len(live)][0])  # make room instead
    if kind == "launch":
        return launch_call(op, live, stream)
    if kind == "hb":
        return happens_before_pattern(op, live, streams, events)
    if kind == "life":
        return lifetime_pattern(op, model, live, streams, events)
    if kind == "deferred":
        return deferred_free_pattern(op, model, live, streams, events)
    if kind == "unwaited":
        return unwaited_allocation_pattern(op, live, streams, events)
    if kind == "copies":
        return copy_pattern(op, streams, events)
    if kind == "prefetch":
        return prefetch_pattern(op, live, streams)
    if kind == "vreuse":
        return virtual_reuse_pattern(op, model, live, streams, virtual)
    if kind == "access":
        base, n = live[i0 % len(live)]
        if i3 % 2 == 0:
            off, ln = 0, n
        else:
            off = i2 % n
            ln = 1 + i3 % (n - off)
        return call("access", base + off, ln, stream, flag)
    if kind == "free":
        return call("free", live[i0 % len(live)][0])
    if kind == "record":
        base, n = live[i0 % len(live)]
        return call("record_stream", base + (i3 % n if flag else 0), stream)
    if kind == "event_record":
        return call("event_record", event, stream)
    if kind == "event_wait":
        return call("event_wait", event, stream)
    if kind == "stream_wait":
        return call("stream_wait", stream, streams[i3 % len(streams)])
    if kind == "stream_sync":
        return call("stream_synchronize", stream)
    if kind == "event_sync":
        return call("event_synchronize", event)
    if kind == "device_sync":
        return call("device_synchronize")
    if kind == "stream_query":
        return call("stream_query", stream, flag)
    if kind == "event_query":
        return call("event_query", event, flag)
    if kind == "define":
        name = None if i3 % 3 == 0 else f"stream-{i3}"
        return call("define_stream", stream, name, stream in virtual)
    if kind in ("copy_to_host", "copy_from_host"):
        ptr, n = HOST_CANDIDATES[i0 % len(HOST_CANDIDATES)]
        return call(kind, ptr, n, stream)
    if kind == "host_access":
        ptr, n = HOST_CANDIDATES[i0 % len(HOST_CANDIDATES)]
        if i3 % 2:
            ptr, n = ptr + i3 % n, 1
        return call("host_access", ptr, n, flag)
    if kind == "host_release":
        ptr, n = HOST_CANDIDATES[i0 % len(HOST_CANDIDATES)]
        return call("host_release", ptr, n)
    assert kind == BAD_KIND, kind
    return bad_call(i0, i1, i2, i3, flag, site, interned, live, stream, event)


def _ordering(kind: int, first: int, second: int, event: int, flag: bool) -> list[Call]:
    """Calls that may order `first`'s work before `second`'s (or only seem to)."""
    return [
        [],
        [Call("stream_wait", (second, first))],
        [Call("event_record", (event, first)), Call("event_wait", (event, second))],
        [Call("event_record", (event, first)), Call("event_synchronize", (event,))],
        [Call("stream_synchronize", (first,))],
        [Call("stream_query", (first, flag))],
        [Call("event_record", (event, first)), Call("event_query", (event, flag))],
        [Call("device_synchronize", ())],
        # through an idle third stream, or the wrong way round
        [Call("stream_wait", (99, first)), Call("stream_wait", (second, 99))],
        [Call("stream_wait", (first, second))],
    ][kind % 10]


def happens_before_pattern(op, live, streams, events) -> list[Call]:
    """Access on one stream, some ordering (or none), access on another: the same bytes."""
    _, i0, i1, i2, i3, flag, site, interned, _ = op
    base, n = live[i0 % len(live)]
    a = streams[i1 % len(streams)]
    b = streams[(i1 + 1 + i2 % (len(streams) - 1)) % len(streams)]
    event = events[i2 % len(events)]
    off = (i3 // 20) % n
    second_write = (i3 // 10) % 2 == 1
    return [
        Call("access", (base, n, a, flag), site, False, interned),
        *_ordering(i3, a, b, event, flag),
        Call("access", (base + off, n - off, b, second_write), 2 + (site + 1) % 3, False, interned),
    ]


def lifetime_pattern(op, model, live, streams, events) -> list[Call]:
    """A use on a stream other than the allocation stream, some fix (or none), the free,
    and sometimes a new allocation over the same bytes."""
    _, i0, i1, i2, i3, flag, site, interned, _ = op
    base, n = live[i0 % len(live)]
    alloc_stream = model.storages[base].alloc_stream
    others = [s for s in streams if s != alloc_stream] or [99]
    use = others[i1 % len(others)]
    event = events[i2 % len(events)]
    fix = i3 % 12
    calls = [Call("access", (base, n, use, flag), site, False, interned)]
    if fix in (10, 11):  # record_stream, alone or with a wait (redundant)
        calls.append(Call("record_stream", (base, use), (site + 2) % 5, False, interned))
        if fix == 11:
            calls.append(Call("stream_wait", (alloc_stream, use)))
    else:
        calls += _ordering(fix, use, alloc_stream, event, flag)
    calls.append(Call("free", (base,), (site + 1) % 5, False, interned))
    if i3 // 12 % 2:
        new_stream = streams[i2 % len(streams)]
        calls.append(Call("alloc", (base, n, new_stream), (site + 3) % 5, False, interned))
    return calls


def _free_slots(live, planned=()) -> list[tuple[int, int]]:
    """Allocation candidates that overlap no live storage and no planned allocation."""
    taken = list(live) + list(planned)
    return [c for c in ALLOC_CANDIDATES if not any(_overlaps(*c, *t) for t in taken)]


def _other(streams, s, i: int) -> int:
    others = [x for x in streams if x != s]
    return others[i % len(others)]


def _sub_range(base: int, n: int, j: int) -> tuple[int, int]:
    if j % 3 == 0:
        return base, n
    off = j % n
    return base + off, 1 + (j // 3) % (n - off)


def launch_call(op, live, stream) -> Call:
    """One launch: up to two read ranges and up to two write ranges of live storages,
    sometimes over the same storage (a read and a write of it in one kernel)."""
    _, i0, i1, i2, i3, flag, site, interned, x = op
    reads, writes = [], []
    for k in range(x % 3):
        reads += _sub_range(*live[(i0 + k * i2) % len(live)], x >> (2 + 3 * k))
    for k in range((x >> 8) % 3):
        writes += _sub_range(*live[(i0 + k + i3) % len(live)], x >> (10 + k) ^ i2)
    container = tuple if flag else list
    return Call("launch", (stream, container(reads), container(writes)), site, False, interned)


def deferred_free_pattern(op, model, live, streams, events) -> list[Call]:
    """A use on another stream and the free; then, after the free, an ordering (or none)
    and what comes next: the next allocation on the allocation stream (elsewhere or over
    the same bytes), one on another stream first or only, a flush, or nothing."""
    _, i0, i1, i2, i3, flag, site, interned, x = op
    base, n = live[i0 % len(live)]
    a = model.storages[base].alloc_stream
    u = _other(streams, a, i1)
    event = events[i2 % len(events)]

    def c(method, *args, site_value=None):
        return Call(method, args, site if site_value is None else site_value, False, interned)

    calls = [c("access", base, n, u, flag)]
    if x % 4 == 0:  # recorded: needed unless the ordering below covers the use
        calls.append(c("record_stream", base, u, site_value=4))
    calls.append(c("free", base, site_value=(site + 1) % 5))
    after = (x >> 2) % 14  # 10-13: no ordering
    ordering = _ordering(after, u, a, event, flag) if after < 10 else []
    live_after = [s for s in live if s[0] != base]
    nxt = (x >> 6) % 6
    between = (x >> 9) & 1  # the ordering between the other stream's alloc and A's
    b = _other(streams, a, i2)
    slots = _free_slots(live_after)
    if nxt in (2, 3) and slots:  # an allocation on another stream: no verdict there
        other_slot = slots[i3 % len(slots)]
        if not between:
            calls += ordering
            ordering = []
        calls.append(c("alloc", *other_slot, b, site_value=(site + 2) % 5))
        live_after.append(other_slot)
        if nxt == 3:
            return calls + ordering
    calls += ordering
    if nxt == 4:
        return [*calls, c("flush")]
    if nxt == 5:
        return calls
    if nxt == 1 and not any(_overlaps(base, n, *s) for s in live_after):
        slot = (base, n)  # over the freed bytes: the verdict, then reuse
    else:
        slots = _free_slots(live_after)
        if not slots:
            return calls
        slot = slots[(i3 // 2) % len(slots)]
    return [*calls, c("alloc", *slot, a, site_value=(site + 3) % 5)]


def unwaited_allocation_pattern(op, live, streams, events) -> list[Call]:
    """Work on A, then an allocation (or adopt) on A, its fill or not, an ordering of A
    before S or none, and a use on S: P14 and its fixes."""
    _, i0, i1, i2, i3, flag, site, interned, x = op
    a = streams[i1 % len(streams)]
    s = _other(streams, a, i2)
    event = events[i2 % len(events)]

    def c(method, *args, site_value=None):
        return Call(method, args, site if site_value is None else site_value, False, interned)

    slots = _free_slots(live)
    calls: list[Call] = []
    prior = x % 4
    if prior == 1:  # a copy on A: A has work
        host, hn = HOST_CANDIDATES[i3 % len(HOST_CANDIDATES)]
        calls.append(c("copy_to_host", host, hn, a))
    elif prior == 2 and live:  # a read on A of another storage
        b0, n0 = live[i3 % len(live)]
        calls.append(c("access", b0, n0, a, False))
    elif prior == 3:  # P14's temporary: filled and read on A, freed (safe)
        tmp = slots[i3 % len(slots)]
        calls += [
            c("alloc", *tmp, a, site_value=2),
            c("access", *tmp, a, True, site_value=2),
            c("access", *tmp, a, False, site_value=3),
            c("free", tmp[0], site_value=3),
        ]
    ptr, n = slots[i0 % len(slots)]
    adopt = (x >> 2) % 5 == 0
    calls.append(c("adopt" if adopt else "alloc", ptr, n, a, site_value=4))
    if (x >> 5) & 1:  # the fill on A
        calls.append(c("access", ptr, n, a, True, site_value=4))
    order = (x >> 6) % 16  # 10-15: no ordering
    if order < 10:
        calls += _ordering(order, a, s, event, flag)
    off = (x >> 10) % n if (x >> 10) & 1 else 0
    calls.append(c("access", ptr + off, n - off, s, flag, site_value=(site + 1) % 5))
    if i3 % 3 == 0:  # a second use on S (counted), or a later write on A
        calls.append(c("access", ptr, n, s if i3 % 2 else a, True, site_value=(site + 2) % 5))
    return calls


def copy_pattern(op, streams, events) -> list[Call]:
    """Two non-blocking copies over overlapping pinned host bytes, on two streams (or one),
    ordered or not; sometimes a third copy refills the buffer on the first stream (P15)."""
    _, i0, i1, i2, i3, flag, site, interned, x = op
    a = streams[i1 % len(streams)]
    b = a if x % 8 == 0 else _other(streams, a, i2)
    event = events[i2 % len(events)]
    h1 = HOST_CANDIDATES[i0 % len(HOST_CANDIDATES)]
    near = [h for h in HOST_CANDIDATES if _overlaps(*h, *h1)]
    h2 = near[i3 % len(near)]
    first = "copy_to_host" if flag else "copy_from_host"
    second = "copy_to_host" if (x >> 3) & 1 else "copy_from_host"

    def c(method, *args, site_value=None):
        return Call(method, args, site if site_value is None else site_value, False, interned)

    order = (x >> 4) % 14  # 10-13: no ordering
    calls = [c(first, *h1, a)]
    calls += _ordering(order, a, b, event, flag) if order < 10 else []
    calls.append(c(second, *h2, b, site_value=(site + 1) % 5))
    if (x >> 8) % 3 == 0:  # the refill on the first stream, after waiting on the second or not
        if (x >> 10) & 1:
            calls.append(Call("stream_wait", (a, b)))
        calls.append(c("copy_to_host", *h1, a, site_value=(site + 2) % 5))
    elif (x >> 8) % 3 == 1 and (x >> 10) & 1:  # the host lets go of the first buffer
        calls.append(Call("host_release", h1))
    return calls


def prefetch_pattern(op, live, streams) -> list[Call]:
    """A prefetcher (P13, P18): each round allocates the next batch on the producer P,
    fills it there, the consumer C waits on P and reads it, the previous batch is freed
    (pending: C's read is not covered), and in some rounds P waits on C or the host syncs
    C before the next allocation. record_stream(C) at one site in some rounds: needed in
    the rounds without a cover, redundant in the others."""
    _, i0, i1, i2, i3, flag, site, interned, x = op
    p = streams[i1 % len(streams)]
    c_stream = _other(streams, p, i2)
    bits = x | (i3 << 12)
    first = _free_slots(live)
    slots = [first[i0 % len(first)]]
    second = _free_slots(live, slots)
    if second and not flag:
        slots.append(second[(i0 // 2) % len(second)])
    record_site = 2 + site % 3  # one record_stream line for every round

    def c(method, *args, site_value):
        return Call(method, args, site_value, False, interned)

    calls: list[Call] = []
    prev = None
    for r in range(2 + i2 % 3):
        rb = bits >> (4 * r)
        batch = slots[r % len(slots)]
        if prev is not None and len(slots) == 1:
            calls.append(c("free", prev[0], site_value=1))
        calls += [
            c("alloc", *batch, p, site_value=0),
            c("access", *batch, p, True, site_value=0),
            Call("stream_wait", (c_stream, p)),
            c("access", *batch, c_stream, False, site_value=1),
        ]
        if rb & 1:
            calls.append(c("record_stream", batch[0], c_stream, site_value=record_site))
        if prev is not None and len(slots) == 2:
            calls.append(c("free", prev[0], site_value=1))
        cover = (rb >> 1) % 4
        if cover == 1:
            calls.append(Call("stream_wait", (p, c_stream)))
        elif cover == 2:
            calls.append(Call("stream_synchronize", (c_stream,)))
        prev = batch
    if (bits >> 14) & 1:
        calls.append(c("free", prev[0], site_value=1))
    return calls


def virtual_reuse_pattern(op, model, live, streams, virtual) -> list[Call]:
    """A storage used on another stream and freed, then its bytes allocated again on
    another stream with a virtual stream involved (no reuse-race: CUDA's per-stream pools
    could not), or on the same stream (still a reuse-race when uncovered)."""
    _, i0, i1, i2, i3, flag, site, interned, x = op
    calls: list[Call] = []
    if virtual:
        v = virtual[i1 % len(virtual)]
    else:
        v = streams[i1 % len(streams)]
        calls.append(Call("define_stream", (v, None, True)))
    w = _other(streams, v, i2)
    a, b = (v, w) if x & 1 else (w, v)  # the freed storage's stream, the new one's
    if (x >> 1) % 4 == 0:
        b = a  # same-stream reuse
    u = _other(streams, a, i3)
    slots = _free_slots(live)
    ptr, n = slots[i0 % len(slots)]

    def c(method, *args, site_value=None):
        return Call(method, args, site if site_value is None else site_value, False, interned)

    calls += [
        c("alloc", ptr, n, a, site_value=0),
        c("access", ptr, n, a, True, site_value=0),
        c("access", ptr, n, u, flag, site_value=2),
        c("free", ptr, site_value=3),
    ]
    near = [
        s
        for s in ALLOC_CANDIDATES
        if _overlaps(ptr, n, *s) and not any(_overlaps(*s, *t) for t in live)
    ]
    calls.append(c("alloc", *near[(x >> 3) % len(near)], b, site_value=4))
    return calls


def bad_call(i0, i1, i2, i3, flag, site, interned, live, stream, event) -> Call:
    """One invalid call (one fault only, so that its error class is settled)."""

    def call(method, *args, site_value=site, raw=False):
        return Call(method, args, site_value, raw, interned)

    def not_in_storage(j):
        holes = [
            BASE + a for a in range(SLOTS * UNIT) if not any(b <= BASE + a < b + n for b, n in live)
        ]
        return holes[j % len(holes)] if holes else OUTSIDE

    variant = i0 % 14
    if variant == 0:  # free of a pointer that is not a live base
        bases = {b for b, _ in live}
        unknown = [p for p, _ in ALLOC_CANDIDATES if p not in bases] or [OUTSIDE]
        return call("free", unknown[i1 % len(unknown)])
    if variant == 1:  # free of an interior pointer
        inner = [(b, n) for b, n in live if n > 1]
        if not inner:
            return call("free", OUTSIDE)
        b, n = inner[i1 % len(inner)]
        return call("free", b + 1 + i2 % (n - 1))
    if variant == 2:  # access where no storage lives
        return call("access", not_in_storage(i1), 1 + i2 % 4, stream, flag)
    if variant == 3:  # access running past the end of a storage
        if not live:
            return call("access", OUTSIDE, 4, stream, flag)
        b, n = live[i1 % len(live)]
        off = i2 % n
        return call("access", b + off, n - off + 1 + i3 % 3, stream, flag)
    if variant == 4:  # allocation (or adopt) overlapping a live storage
        if not live:
            return call("record_stream", OUTSIDE, stream)
        b, n = live[i1 % len(live)]
        start = b + (i2 % (n + 4)) - 3
        method = "adopt" if i3 % 3 == 0 else "alloc"
        return call(method, start, 1 + i3 % 12 + max(0, b - start), stream)
    if variant == 5:  # record_stream on no storage
        return call("record_stream", not_in_storage(i1), stream)
    if variant in (6, 7):  # zero or negative size
        size = 0 if variant == 6 else -1 - i3
        method = ("alloc", "access", "copy_to_host", "copy_from_host", "host_access", "adopt")[
            i1 % 6
        ]
        ptr = live[i2 % len(live)][0] if live and method == "access" else OUTSIDE
        if method in ("alloc", "adopt", "access", "copy_to_host", "copy_from_host"):
            args = (ptr, size, stream) + ((flag,) if method == "access" else ())
        else:
            args = (ptr, size, flag)
        return call(method, *args)
    if variant == 8:  # a pointer that is not an int
        bad = (1.5, "0x10", None, b"\x00")[i1 % 4]
        method = ("free", "alloc", "access", "host_access", "record_stream", "adopt")[i2 % 6]
        args = {
            "free": (bad,),
            "alloc": (bad, 8, stream),
            "adopt": (bad, 8, stream),
            "access": (bad, 8, stream, flag),
            "host_access": (bad, 8, flag),
            "record_stream": (bad, stream),
        }[method]
        return call(method, *args)
    if variant == 9:  # a stream handle out of the 64-bit range
        bad = (1 << 64, -(1 << 63) - 1, 1 << 70)[i1 % 3]
        method = ("alloc", "stream_wait", "event_record", "stream_synchronize", "adopt")[i2 % 5]
        if method in ("alloc", "adopt"):
            return call(method, OUTSIDE, 8, bad)
        if method == "stream_wait":
            return call("stream_wait", stream, bad) if flag else call("stream_wait", bad, stream)
        if method == "event_record":
            return call("event_record", event, bad)
        return call("stream_synchronize", bad)
    if variant == 10:  # an event handle out of range, or not an int
        bad = (1 << 64, -(1 << 63) - 1, "ev", 2.0)[i1 % 4]
        method = ("event_record", "event_wait", "event_synchronize", "event_query")[i2 % 4]
        if method in ("event_record", "event_wait"):
            return call(method, bad, stream)
        if method == "event_query":
            return call(method, bad, flag)
        return call(method, bad)
    if variant == 11:  # a site that is neither None, a str nor an interned int
        bad = (3.25, 987_654_321, b"x.py:1", ("x.py", 1))[i1 % 4]
        if live and flag:
            b, n = live[i2 % len(live)]
            return call("access", b, n, stream, False, site_value=bad, raw=True)
        method = "adopt" if i3 % 2 else "alloc"
        return call(method, OUTSIDE, 8, stream, site_value=bad, raw=True)
    if variant == 13:  # a launch with one bad range (every range is checked first)
        good = [live[i2 % len(live)][0], live[i2 % len(live)][1]] if live else []
        bad = (
            [not_in_storage(i1), 1 + i3 % 4],  # in no storage
            [OUTSIDE, 0],  # zero size
            [OUTSIDE],  # not a pair
            [1.5, 8],  # not an int
        )[i1 % 4]
        reads, writes = (good + bad, good) if flag else (good, bad + good)
        return call("launch", stream, tuple(reads), tuple(writes))
    # variant 12: a stream handle that is not an int
    bad = ("s", 1.0, None)[i1 % 3]
    if live:
        b, n = live[i2 % len(live)]
        return call("access", b, n, bad, flag)
    return call("stream_synchronize", bad)


# ------------------------------------------------------------------ checking


def _hz(h) -> tuple:
    return tuple(getattr(h, f) for f in FIELDS)


def _show(rows) -> str:
    return "\n".join("    " + repr(dict(zip(FIELDS, r, strict=True))) for r in rows)


class Mismatch(AssertionError):
    pass


def _scaled_hz(row: tuple, k: int) -> tuple:
    if k == 1:
        return row
    row = list(row)
    for i in (PTR, OTHER_PTR):
        if row[i] is not None:
            row[i] = scale_ptr(row[i], k)
    for i in (NBYTES, OTHER_NBYTES):
        if row[i] is not None:
            row[i] = scale_size(row[i], k)
    return tuple(row)


PTR, NBYTES = FIELDS.index("ptr"), FIELDS.index("nbytes")
OTHER_PTR, OTHER_NBYTES = FIELDS.index("other_ptr"), FIELDS.index("other_nbytes")


def check_trace(streams, events, virtual, declare_first, ops, scale=1) -> None:
    engine = Engine()
    model = ReferenceModel()
    done: list[str] = []
    got_step: list[int] = []
    want_step: list[int] = []

    def fail(why: str) -> None:
        trace = "\n".join("    " + line for line in done)
        raise Mismatch(f"{why}\n  trace (e = Engine()):\n{trace}")

    calls: list[Call] = []
    if declare_first:
        calls = [Call("define_stream", (s, f"v{s}", True)) for s in virtual]
    pending = list(ops)
    flushed = False

    while calls or pending or not flushed:
        if calls:
            call = calls.pop(0)
        elif pending:
            made = concretize(pending.pop(0), model, streams, events, virtual)
            if not isinstance(made, list):
                made = [made]
            calls = [c for c in made if c is not None]
            continue
        else:  # every trace ends like a region, test or run: with a flush
            call = Call("flush", ())
            flushed = True
        done.append(call.render(scale))
        step = len(done)

        model_err = None
        try:
            getattr(model, call.method)(*call.model_args())
        except ModelError as exc:
            model_err = exc

        engine_args = call.engine_args(engine, scale)  # interns first: not part of the call
        if model_err is not None:
            stats_before = engine.stats()
            hz_before = [h.to_dict() for h in engine.hazards()]
        engine_err = None
        try:
            getattr(engine, call.method)(*engine_args)
        except LifetimesError as exc:
            engine_err = exc
        except Exception as exc:  # noqa: BLE001 - a non-LifetimesError is itself a finding
            fail(f"engine raised {type(exc).__name__} (not a LifetimesError): {exc}")

        if model_err is not None and engine_err is None:
            fail(f"model rejected the last call ({model_err}) but the engine accepted it")
        if model_err is None and engine_err is not None:
            fail(
                f"engine rejected the last call with {type(engine_err).__name__}: "
                f"{engine_err}; the model accepted it"
            )
        if model_err is not None:
            want = ERROR_CLASSES[type(model_err)]
            if not isinstance(engine_err, want):
                fail(
                    f"last call: engine raised {type(engine_err).__name__} ({engine_err}), "
                    f"model {type(model_err).__name__} ({model_err})"
                )
            if engine.stats() != stats_before:
                fail(f"rejected call changed stats: {stats_before} -> {engine.stats()}")
            if [h.to_dict() for h in engine.hazards()] != hz_before:
                fail("rejected call changed the hazards")
            continue

        got = [_hz(h) for h in engine.hazards()]
        want = [_scaled_hz(_hz(h), scale) for h in model.hazards()]
        # the call that first found each hazard: lists only grow
        got_step += [step] * (len(got) - len(got_step))
        want_step += [step] * (len(want) - len(want_step))
        if got == want:
            continue
        same = not STRICT_ORDER and sorted(zip(got_step, map(repr, got), strict=True)) == sorted(
            zip(want_step, map(repr, want), strict=True)
        )
        if not same:
            fail(
                f"hazards differ after the last call\n  engine:\n{_show(got)}\n  model:\n{_show(want)}"
            )

    for rule in model.rules:
        hypothesis.event(f"rule: {rule}")
    for kind in sorted({h.kind for h in model.hazards()}):
        hypothesis.event(f"hazard: {kind}")

    stats = engine.stats()
    for name, value in model.counts().items():
        if stats.get(name) != value:
            fail(f"stats[{name!r}] = {stats.get(name)!r}, model says {value}")
    if engine.hazard_count() != model.hazard_count():
        fail(f"hazard_count {engine.hazard_count()} != {model.hazard_count()}")
    if engine.error_count() != model.error_count():
        fail(f"error_count {engine.error_count()} != {model.error_count()}")


@settings(
    max_examples=2500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(programs())
def test_engine_agrees_with_reference_model(program):
    check_trace(*program)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(programs(bad_weight=12, max_ops=30))
def test_rejected_calls_change_nothing_and_match_model(program):
    # check_trace asserts, for every rejected call, that the engine's stats and hazards
    # are unchanged and that both sides reject it with matching error classes.
    check_trace(*program)


# ------------------------------------------------ bulk path vs one call per event

REPLAY_STREAMS = (0, 1, 2)
REPLAY_EVENTS = (0, 3)

# op codes, allocations and accesses weighted up so that most rows find a live storage
REPLAY_OPS = (0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
replay_row = st.tuples(
    st.sampled_from(REPLAY_OPS), st.integers(0, 31), st.integers(0, 31), st.integers(0, 31)
)


def _replay_rows(raw, model: ReferenceModel) -> list[tuple[int, int, int, int]]:
    """Valid rows chosen against the model's state, applying them to the model."""
    rows = []
    for op, i, j, k in raw:
        live = _live_storages(model)
        s = REPLAY_STREAMS[j % 3]
        ev = REPLAY_EVENTS[k % 2]
        row = None
        if op in (0, 11):
            free = _free_slots(live)
            if free:
                p, n = free[i % len(free)]
                row = (op, p, n, s)
        elif op in (1, 2) and live:
            b, n = live[i % len(live)]
            off = k % n
            row = (op, b + off, n - off, s)
        elif op == 3 and live:
            row = (3, live[i % len(live)][0], 0, 0)
        elif op == 4 and live:
            row = (4, live[i % len(live)][0], s, 0)
        elif op in (5, 6):
            row = (op, ev, s, 0)
        elif op == 7:
            row = (7, s, REPLAY_STREAMS[i % 3], 0)
        elif op == 8:
            row = (8, s, 0, 0)
        elif op == 9:
            row = (9, ev, 0, 0)
        elif op in (10, 12):
            row = (op, 0, 0, 0)
        if row is None:
            continue
        apply_row(model, row)
        rows.append(row)
    return rows


def apply_row(target, row) -> None:
    op, a, b, c = row
    if op == 0:
        target.alloc(a, b, c, None)
    elif op in (1, 2):
        target.access(a, b, c, op == 2, None)
    elif op == 3:
        target.free(a, None)
    elif op == 4:
        target.record_stream(a, b, None)
    elif op == 5:
        target.event_record(a, b)
    elif op == 6:
        target.event_wait(a, b)
    elif op == 7:
        target.stream_wait(a, b)
    elif op == 8:
        target.stream_synchronize(a)
    elif op == 9:
        target.event_synchronize(a)
    elif op == 10:
        target.device_synchronize()
    elif op == 11:
        target.adopt(a, b, c, None)
    else:
        assert op == 12, row
        target.flush()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(replay_row, min_size=4, max_size=40))
def test_replay_agrees_with_calls_and_model(raw):
    model = ReferenceModel()
    rows = _replay_rows(raw, model)
    if not rows:
        return
    rows.append((12, 0, 0, 0))  # ends with a flush, like every region
    apply_row(model, rows[-1])
    bulk = Engine()
    applied = bulk.replay(np.array(rows, dtype=np.int64).reshape(-1, 4))
    assert applied == len(rows)
    single = Engine()
    for row in rows:
        apply_row(single, row)
    got_bulk = [_hz(h) for h in bulk.hazards()]
    got_single = [_hz(h) for h in single.hazards()]
    want = [_hz(h) for h in model.hazards()]
    assert got_bulk == got_single, f"replay {got_bulk} != per-call {got_single}; rows {rows}"
    assert sorted(got_bulk, key=repr) == sorted(want, key=repr), (
        f"engine {got_bulk} != model {want}; rows {rows}"
    )
