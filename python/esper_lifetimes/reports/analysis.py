"""Analysis: a timeline replayed through the engine one call at a time: streams,
storage lifetimes, waits and syncs, and each hazard placed at the event that opened it."""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from esper_lifetimes import Engine, LifetimesError
from esper_lifetimes.reports._common import hazard_dict, hazard_key, stream_label
from esper_lifetimes.reports.timeline import HAS_SITE, Timeline

# --------------------------------------------------------------------------------------
# Analysis: replay the timeline, build storages, links, and hazard anchors
# --------------------------------------------------------------------------------------


@dataclass
class _Stream:
    handle: int
    name: str
    virtual: bool
    lane: int
    rows: int = 0
    named: bool = False


@dataclass(eq=False)
class _Storage:
    id: int
    ptr: int
    nbytes: int
    stream: int
    alloc_seq: int
    alloc_site: str | None
    free_seq: int | None = None
    free_site: str | None = None
    uses: list[tuple[int, int, bool, int, int, str | None]] = field(default_factory=list)
    """(seq, stream, write, first byte, end byte, site) of each access."""
    last_use: dict[int, tuple[int, str | None]] = field(default_factory=dict)
    records: list[tuple[int, int, str | None]] = field(default_factory=list)
    row: int = 0
    hazards: list[int] = field(default_factory=list)


@dataclass
class _Hazard:
    index: int  # 1-based report id
    fields: dict[str, Any]
    opened_seq: int | None = None
    occurrences: list[int] = field(default_factory=list)
    anchors: list[dict[str, Any]] = field(default_factory=list)
    """The first occurrence's points on the timeline, in event order."""
    paths: list[list[dict[str, Any]]] = field(default_factory=list)
    """The points of each placed occurrence (the first is ``anchors``), at most _MAX_PATHS."""


_MAX_REPEAT_SCAN = 256  # distinct hazards past which repeats are not placed on the timeline
_MAX_OCCURRENCES = 1000  # occurrence events kept per hazard
_MAX_PATHS = 1000  # occurrences per hazard kept with their points (the page draws a sample)
_MAX_TOMBS = 4096  # freed storages kept to place reuse-races


class Analysis:
    """A timeline replayed through the engine: streams, storage lifetimes, waits and syncs,
    and each hazard placed at the event that opened it. Made by :func:`analyze`; every
    writer takes one (or makes one from a :class:`Timeline`)."""

    def __init__(self, timeline: Timeline):
        self.timeline = timeline
        self.engine: Any = None
        self.streams: dict[int, _Stream] = {}
        self.storages: list[_Storage] = []
        self.host_copies: list[tuple[int, str, int, int, int, str | None]] = []
        self.marks: list[tuple[int, str, int | None, dict[str, Any]]] = []
        """(seq, what, stream or None for the host, details): uses, syncs, waits, ..."""
        self.links: list[tuple[str, int | None, int, int | None, int]] = []
        """(what, from stream, from seq, to stream (None: host), to seq)."""
        self.hazards: list[_Hazard] = []
        self.replayed: list[_Hazard] = []
        self.rejected: list[tuple[int, str, str]] = []
        """Calls the engine rejected on replay: (seq, op, error)."""
        self.repeats_placed = True
        """False when repeats of hazards were not all placed (too many distinct hazards)."""

    @property
    def events(self) -> int:
        return len(self.timeline)

    def stream_name(self, handle: int | None) -> str | None:
        if handle is None:
            return None
        s = self.streams.get(handle)
        return s.name if s else stream_label(handle)

    def t_ns(self, seq: int) -> int | None:
        return self.timeline._events[seq][0] if 0 <= seq < len(self.timeline._events) else None

    def has_wall_clock(self) -> bool:
        ev = self.timeline._events
        return bool(ev) and all(t is not None for t, _, _ in ev)


def analyze(
    timeline: Timeline | Analysis,
    hazards: Iterable[Any] | None = None,
    *,
    engine: Any = None,
) -> Analysis:
    """Replay ``timeline`` through ``engine`` (a new Engine by default) one call at a time.

    ``hazards`` are the run's hazards (Hazard objects or dicts), matched to the replayed
    ones by their deduplication key; by default the replayed hazards are reported.
    """
    if isinstance(timeline, Analysis):
        if hazards is None:
            return timeline
        timeline = timeline.timeline
    a = Analysis(timeline)
    a.engine = engine = Engine() if engine is None else engine
    _Replayer(a, engine).run()
    by_key = {hazard_key(h.fields): h for h in a.replayed}
    if hazards is None:
        a.hazards = a.replayed
    else:
        a.hazards = []
        for index, given in enumerate(hazards, start=1):
            d = hazard_dict(given)
            found = by_key.get(hazard_key(d))
            if found is None:
                a.hazards.append(_Hazard(index, d))
            else:
                a.hazards.append(
                    _Hazard(
                        index, d, found.opened_seq, found.occurrences, found.anchors, found.paths
                    )
                )
    for h in a.hazards:
        for path in h.paths:
            for anchor in path:
                sid = anchor.get("storage")
                if sid is not None and h.index not in a.storages[sid].hazards:
                    a.storages[sid].hazards.append(h.index)
    _assign_rows(a)
    return a


class _Replayer:
    def __init__(self, a: Analysis, engine: Any):
        self.a = a
        self.engine = engine
        self.live: dict[int, _Storage] = {}
        self.bases: list[int] = []
        self.freed_at: dict[int, _Storage] = {}  # base -> latest storage freed there
        # Storages freed with a use on another stream: a later allocation over them may be
        # a reuse-race. Forgotten once reallocated, at a device synchronize, or past a cap.
        self.tomb_list: list[_Storage] = []
        self.reused: list[_Storage] = []
        self.events_rec: dict[int, tuple[int, int]] = {}  # event -> (stream, seq) recorded
        self.last_work: dict[int, int] = {}  # stream -> seq of its latest work
        self.counts: list[int] = []
        self.pending_frees = False  # a free with a foreign use since the last alloc/flush

    def stream(self, handle: int) -> _Stream:
        s = self.a.streams.get(handle)
        if s is None:
            s = _Stream(handle, stream_label(handle), False, len(self.a.streams))
            self.a.streams[handle] = s
        return s

    def find(self, ptr: int) -> _Storage | None:
        i = bisect.bisect_right(self.bases, ptr) - 1
        if i >= 0:
            s = self.live[self.bases[i]]
            if ptr < s.ptr + s.nbytes:
                return s
        return None

    def run(self) -> None:
        a, engine, tl = self.a, self.engine, self.a.timeline
        site_of = tl._site
        for seq, (_t, op, args) in enumerate(tl._events):
            if op in HAS_SITE:
                args = args[:-1] + (site_of(args[-1]),)
            try:
                getattr(engine, op)(*args)
            except LifetimesError as exc:
                a.rejected.append((seq, op, f"{type(exc).__name__}: {exc}"))
                continue
            self.step(seq, op, args)
        # The end of the timeline is the end of its run: frees still pending are judged
        # now (a timeline that ends with a flush loses nothing by it). Their hazards are
        # placed at the last event.
        if hasattr(engine, "flush") and len(tl._events):
            engine.flush()
            self.step(len(tl._events) - 1, "flush", ())
        for rec, h in zip(a.replayed, engine.hazards(), strict=True):
            rec.fields = hazard_dict(h)  # final counts

    def step(self, seq: int, op: str, args: tuple) -> None:
        """Update the model after the engine accepted ``op(*args)`` at event ``seq``, and
        place the hazards it opened or repeated."""
        a, engine = self.a, self.engine
        model = getattr(self, "op_" + op, None)  # an op this model does not draw: none
        maybe_repeat = model(seq, *args) if model is not None else True
        n = engine.hazard_count()
        known = len(self.counts)
        if maybe_repeat and known and known <= _MAX_REPEAT_SCAN:
            for i, h in enumerate(engine.hazards()[:known]):
                if h.count > self.counts[i]:
                    self.counts[i] = h.count
                    rec = a.replayed[i]
                    if len(rec.occurrences) < _MAX_OCCURRENCES:
                        rec.occurrences.append(seq)
                    if len(rec.paths) < _MAX_PATHS:
                        rec.paths.append(self.anchors(rec.fields, seq, op, args))
        elif maybe_repeat and known > _MAX_REPEAT_SCAN:
            a.repeats_placed = False
        if n > known:
            for h in engine.hazards(known):
                d = hazard_dict(h)
                rec = _Hazard(len(a.replayed) + 1, d, seq, [seq])
                rec.anchors = self.anchors(d, seq, op, args)
                rec.paths.append(rec.anchors)
                a.replayed.append(rec)
                self.counts.append(h.count)
        if self.reused:
            gone = {id(t) for t in self.reused}
            self.tomb_list = [t for t in self.tomb_list if id(t) not in gone]
            self.reused = []

    # -- per op: update the model; return True when a known hazard may have repeated --

    def op_define_stream(self, seq, stream, name=None, virtual=False):
        s = self.stream(stream)
        if name is not None:
            s.name, s.named = name, True
        s.virtual = bool(virtual)
        return False

    def op_alloc(self, seq, ptr, nbytes, stream, site):
        self.stream(stream)
        s = _Storage(len(self.a.storages), ptr, nbytes, stream, seq, site)
        self.a.storages.append(s)
        self.live[ptr] = s
        bisect.insort(self.bases, ptr)
        # A free with a use on another stream is judged at the next allocation on its
        # allocation stream: an unsynced-free may open or repeat here.
        pending = self.pending_frees
        self.pending_frees = False
        if self.tomb_list:
            hi = ptr + nbytes
            hit = [t for t in self.tomb_list if t.ptr < hi and ptr < t.ptr + t.nbytes]
            if hit:
                self.reused = hit
                return True
        return pending

    def op_adopt(self, seq, ptr, nbytes, stream, site):
        self.stream(stream)
        s = _Storage(len(self.a.storages), ptr, nbytes, stream, seq, site)
        self.a.storages.append(s)
        self.live[ptr] = s
        bisect.insort(self.bases, ptr)
        return False

    def op_flush(self, seq):
        self.pending_frees = False
        return True

    def op_launch(self, seq, stream, reads, writes, site):
        multi = False
        for ranges, write in ((reads, False), (writes, True)):
            for i in range(0, len(ranges), 2):
                multi |= self.op_access(seq, ranges[i], ranges[i + 1], stream, write, site)
        return multi

    def op_access(self, seq, ptr, nbytes, stream, write, site):
        self.stream(stream)
        s = self.find(ptr)
        sid = None
        multi = False
        if s is not None:
            sid = s.id
            s.uses.append((seq, stream, bool(write), ptr, ptr + nbytes, site))
            s.last_use[stream] = (seq, site)
            # two streams, or one that is not the allocation stream (unwaited-allocation)
            multi = len(s.last_use) > 1 or stream != s.stream
        self.last_work[stream] = seq
        what = "write" if write else "read"
        self.a.marks.append((seq, what, stream, {"site": site, "storage": sid, "ptr": ptr}))
        return multi

    def op_record_stream(self, seq, ptr, stream, site):
        self.stream(stream)
        s = self.find(ptr)
        sid = None
        if s is not None:
            sid = s.id
            s.records.append((seq, stream, site))
        self.a.marks.append((seq, "record_stream", stream, {"site": site, "storage": sid}))
        return True

    def op_free(self, seq, ptr, site):
        s = self.live.pop(ptr)
        self.bases.pop(bisect.bisect_left(self.bases, ptr))
        s.free_seq, s.free_site = seq, site
        self.freed_at[ptr] = s
        foreign = any(u != s.stream for u in s.last_use)
        self.pending_frees |= foreign
        if foreign:
            self.tomb_list.append(s)
            if len(self.tomb_list) > _MAX_TOMBS:
                del self.tomb_list[: len(self.tomb_list) - _MAX_TOMBS]
        return foreign or bool(s.records)

    def op_event_record(self, seq, event, stream):
        self.stream(stream)
        self.events_rec[event] = (stream, seq)
        self.a.marks.append((seq, "event_record", stream, {"event": event}))
        return False

    def op_event_wait(self, seq, event, stream):
        self.stream(stream)
        rec = self.events_rec.get(event)
        self.a.marks.append((seq, "event_wait", stream, {"event": event}))
        if rec is not None:
            self.a.links.append(("event_wait", rec[0], rec[1], stream, seq))
        return False

    def op_stream_wait(self, seq, waiter, waited):
        self.stream(waited)
        self.stream(waiter)
        self.a.marks.append((seq, "wait_stream", waiter, {"waited": waited}))
        self.a.links.append(("wait_stream", waited, self.last_work.get(waited, seq), waiter, seq))
        return False

    def op_stream_synchronize(self, seq, stream):
        self.stream(stream)
        self.a.marks.append((seq, "stream_synchronize", None, {"stream": stream}))
        self.a.links.append(("synchronize", stream, self.last_work.get(stream, seq), None, seq))
        return False

    def op_event_synchronize(self, seq, event):
        rec = self.events_rec.get(event)
        self.a.marks.append((seq, "event_synchronize", None, {"event": event}))
        if rec is not None:
            self.a.links.append(("synchronize", rec[0], rec[1], None, seq))
        return False

    def op_device_synchronize(self, seq):
        self.tomb_list.clear()
        self.a.marks.append((seq, "device_synchronize", None, {}))
        self.a.links.append(("device_synchronize", None, seq, None, seq))
        return False

    def op_stream_query(self, seq, stream, complete):
        self.stream(stream)
        self.a.marks.append(
            (seq, "stream_query", None, {"stream": stream, "complete": bool(complete)})
        )
        if complete:
            self.a.links.append(("synchronize", stream, self.last_work.get(stream, seq), None, seq))
        return False

    def op_event_query(self, seq, event, complete):
        rec = self.events_rec.get(event)
        self.a.marks.append((seq, "event_query", None, {"event": event, "complete": complete}))
        if complete and rec is not None:
            self.a.links.append(("synchronize", rec[0], rec[1], None, seq))
        return False

    def op_forget_event(self, seq, event):
        self.events_rec.pop(event, None)
        return False

    def _copy(self, seq, what, host_ptr, nbytes, stream, site):
        self.stream(stream)
        self.last_work[stream] = seq
        self.a.host_copies.append((seq, what, host_ptr, nbytes, stream, site))
        self.a.marks.append((seq, what, stream, {"site": site, "host_ptr": host_ptr}))
        return False

    def op_copy_to_host(self, seq, host_ptr, nbytes, stream, site):
        return self._copy(seq, "copy_to_host", host_ptr, nbytes, stream, site)

    def op_copy_from_host(self, seq, host_ptr, nbytes, stream, site):
        return self._copy(seq, "copy_from_host", host_ptr, nbytes, stream, site)

    def op_host_access(self, seq, host_ptr, nbytes, write, site):
        what = "host_write" if write else "host_read"
        self.a.marks.append((seq, what, None, {"site": site, "host_ptr": host_ptr}))
        return bool(self.a.host_copies)

    def op_host_release(self, seq, host_ptr, nbytes):
        return False

    # -- where a new hazard sits on the timeline ----------------------------------------

    def anchors(self, h: dict[str, Any], seq: int, op: str, args: tuple) -> list[dict[str, Any]]:
        """The points of a hazard found at event ``seq`` (``op(*args)``): the first occurrence's
        details are ``h``; a repeat has the same sites, maybe other streams and storages."""
        kind = h["kind"]
        out: list[dict[str, Any]] = []

        def add(role, at, stream, site, storage=None):
            out.append(
                {
                    "role": role,
                    "seq": at,
                    "stream": stream,
                    "site": site,
                    "storage": None if storage is None else storage.id,
                }
            )

        def foreign_use(s: _Storage) -> tuple[int, int, str | None] | None:
            """The latest use on another stream than s's, preferring h's use site and stream."""
            best = None
            for stream, (at, site) in s.last_use.items():
                if stream == s.stream:
                    continue
                score = (site == h["use_site"], stream == h["use_stream"], at)
                if best is None or score > best[0]:
                    best = (score, (at, stream, site))
            return None if best is None else best[1]

        if op == "launch":  # place it as the one access of the launch that it is about
            op, args = "access", self.launch_access(h, args)
        if kind == "unsynced-free" and h["ptr"] in self.freed_at:
            # judged at the free (engines before pending frees), the next allocation on
            # its allocation stream, or a flush
            s = self.freed_at[h["ptr"]]
            use = foreign_use(s)
            if use is not None:
                add("use", use[0], use[1], use[2], s)
            if s.free_seq is not None:
                add("free", s.free_seq, s.stream, s.free_site, s)
            if op == "alloc":
                add("judged", seq, args[2], args[3], self.live.get(args[0]))
        elif kind == "redundant-record-stream" and op != "record_stream":
            # given at a flush (per call site) or, by older engines, at the free
            found = [x for x in (self.find(h["ptr"]), self.freed_at.get(h["ptr"])) if x]
            found.sort(key=lambda x: not any(r[2] == h["use_site"] for r in x.records))
            if found:
                s = found[0]
                recs = [r for r in s.records if r[2] == h["use_site"]] or s.records
                if recs:
                    add("record_stream", recs[0][0], recs[0][1], recs[0][2], s)
                if s.free_seq is not None:
                    add("free", s.free_seq, s.stream, s.free_site, s)
        elif op == "access" and kind == "unwaited-allocation":
            s = self.find(args[0])
            if s is not None:
                add("alloc", s.alloc_seq, s.stream, s.alloc_site, s)
            add("access", seq, args[2], args[4], s)
        elif op == "alloc" and kind == "reuse-race":
            lo, hi = args[0], args[0] + args[1]
            old = None
            for t in reversed(self.tomb_list):
                if t.ptr < hi and lo < t.ptr + t.nbytes:
                    if t.free_site == h["free_site"]:
                        old = t
                        break
                    old = old or t
            if old is not None:
                use = foreign_use(old)
                if use is not None:
                    add("use", use[0], use[1], use[2], old)
                add("free", old.free_seq, old.stream, old.free_site, old)
            add("realloc", seq, args[2], args[3], self.live.get(args[0]))
        elif op == "access" and kind == "unsynced-access":
            s = self.find(args[0])
            if s is not None:
                other = None
                for use in reversed(s.uses[:-1]):
                    if use[1] != args[2] and args[0] < use[4] and use[3] < args[0] + args[1]:
                        if use[5] == h["other_site"] and (use[2] or args[3]):
                            other = use
                            break
                        other = other or use
                if other is not None:
                    add("access", other[0], other[1], other[5], s)
            add("access", seq, args[2], args[4], s)
        elif op == "record_stream" and kind == "redundant-record-stream":
            add("record_stream", seq, args[1], args[2], self.find(args[0]))
        elif op == "host_access":
            lo, hi = args[0], args[0] + args[1]
            copy = None
            for c in reversed(self.a.host_copies):
                if c[2] < hi and lo < c[2] + c[3]:
                    if c[5] == h["use_site"]:
                        copy = c
                        break
                    copy = copy or c
            if copy is not None:
                add("copy", copy[0], copy[4], copy[5])
            add("host_write" if args[2] else "host_read", seq, None, args[3])
        if not any(x["seq"] == seq for x in out) and op != "flush":
            stream = args[2] if op in ("alloc", "adopt", "access") else None
            add(op, seq, stream, args[-1] if op in HAS_SITE else None)
        out.sort(key=lambda x: x["seq"])
        return out

    def launch_access(self, h: dict[str, Any], args: tuple) -> tuple:
        """The (ptr, nbytes, stream, write, site) of the launch's range that ``h`` is on."""
        stream, reads, writes, site = args
        lo, hi = h["ptr"], h["ptr"] + max(h["nbytes"] or 1, 1)
        first = None
        for ranges, write in ((writes, True), (reads, False)):
            for i in range(0, len(ranges), 2):
                p, n = ranges[i], ranges[i + 1]
                if p < hi and lo < p + n:
                    return (p, n, stream, write, site)
                first = first or (p, n, stream, write, site)
        return first or (h["ptr"], h["nbytes"] or 1, stream, False, site)


def _assign_rows(a: Analysis) -> None:
    """Storage bars: rows per allocation stream so that lifetimes on a row never overlap."""
    end = len(a.timeline)
    by_stream: dict[int, list[_Storage]] = {}
    for s in a.storages:
        by_stream.setdefault(s.stream, []).append(s)
    for handle, storages in by_stream.items():
        row_end: list[int] = []  # row -> seq after which it is free again
        for s in storages:  # already in allocation order
            stop = s.free_seq if s.free_seq is not None else end
            for row, busy_until in enumerate(row_end):
                if busy_until < s.alloc_seq:
                    s.row = row
                    row_end[row] = stop
                    break
            else:
                s.row = len(row_end)
                row_end.append(stop)
        a.streams[handle].rows = len(row_end)


def analysis_for(timeline: Any, hazards: Iterable[Any] | None) -> Analysis | None:
    if timeline is None:
        return None
    if isinstance(timeline, Analysis):
        return timeline if hazards is None else analyze(timeline.timeline, hazards)
    return analyze(timeline, hazards)


def hazard_list(hazards: Iterable[Any] | None, analysis: Analysis | None) -> list[dict]:
    if hazards is None:
        if analysis is None:
            raise ValueError("give the hazards, or a timeline to find them in")
        return [h.fields for h in analysis.hazards]
    return [hazard_dict(h) for h in hazards]
