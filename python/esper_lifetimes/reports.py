"""Reports of one run: text, JSON, a Chrome trace-event timeline and a self-contained HTML page.

All four are made from the same two inputs: the hazards the engine found, and (for the
timelines) a :class:`Timeline`, the ordered record of the engine calls of the run. The
formats are described in ``docs/REPORTS.md``; the JSON report's schema is
``esper_lifetimes/schemas/report-v1.schema.json``.

>>> timeline = Timeline()
>>> engine = timeline.wrap(Engine())            # an Engine that also records every call
>>> engine.alloc(0x1000, 4096, 0, "ex.py:1")    # doctest: +SKIP
>>> write_all("report", engine.hazards(), timeline)  # doctest: +SKIP

A tracker that drives its own engine can feed the timeline directly with
``timeline.record(op, **args)`` after each call the engine accepted; a trace file becomes
a timeline with :meth:`Timeline.from_trace`.

The timelines place each hazard at the event where it opened: the timeline is replayed
through a fresh :class:`~esper_lifetimes.Engine` one call at a time, and the call after
which ``hazard_count()`` grew is the one that opened the new hazards.
"""

from __future__ import annotations

import bisect
import html
import json
import linecache
import os
import re
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import IO, Any

from esper_lifetimes import Engine, LifetimesError, vocab
from esper_lifetimes.recording import Recorder

__all__ = [
    "SCHEMA_NAME",
    "SCHEMA_VERSION",
    "CHROME_TRACE_SCHEMA",
    "KIND_ORDER",
    "KINDS",
    "Timeline",
    "TimelineEvent",
    "TimelineEngine",
    "Analysis",
    "analyze",
    "hazard_dict",
    "report_dict",
    "load_schema",
    "write_text",
    "write_json",
    "chrome_trace",
    "write_chrome_trace",
    "html_report",
    "write_html",
    "write_all",
]

SCHEMA_NAME = "esper-lifetimes-report"
"""The JSON report's ``schema`` value."""

SCHEMA_VERSION = 1
"""The JSON report's ``version``: bumped whenever a field is added, removed or changes meaning."""

CHROME_TRACE_SCHEMA = "esper-lifetimes-chrome-trace"
"""``otherData.schema`` of the Chrome trace (its ``otherData.version`` is 1)."""

# The kinds (name, severity, title, hint, roles, colour): esper_lifetimes.vocab.
KindInfo = vocab.KindInfo
KINDS: dict[str, KindInfo] = {k.name: k for k in vocab.kinds()}
KIND_ORDER = tuple(KINDS)
_OTHER_KIND = KindInfo("?", "error", "hazard", "", (), vocab.OTHER_COLOR)


def _kind_info(kind: str) -> KindInfo:
    return KINDS.get(kind, _OTHER_KIND)


_kind_order = vocab.kind_order


# --------------------------------------------------------------------------------------
# The timeline: the engine calls of one run, in order
# --------------------------------------------------------------------------------------

_R = vocab.REQUIRED

# op -> ((argument, default), ...), in the order of the Engine method's parameters.
_OPS: dict[str, tuple[tuple[str, Any], ...]] = {
    op: tuple((a.name, a.default) for a in spec.args) for op, spec in vocab.OPS.items()
}
OPS = tuple(_OPS)
_HAS_SITE = frozenset(op for op, spec in vocab.OPS.items() if spec.has_site)

# Bulk-path rows [code, a, b, c] (ENGINE-API.md) -> (op, positional arguments).
_BULK: dict[int, tuple[str, Callable[[int, int, int], tuple]]] = {
    code: (b.op, b.args) for code, b in vocab.BULK.items()
}


_bind = vocab.bind


@dataclass(frozen=True)
class TimelineEvent:
    """One engine call of a timeline."""

    seq: int
    """0-based position of the call in the timeline."""
    t_ns: int | None
    """Monotonic timestamp (``time.perf_counter_ns``) of the call, or None when unknown."""
    op: str
    """The Engine method."""
    args: dict[str, Any]
    """Its named arguments, defaults included."""
    line: int | None = None
    """Line in the trace file the event was read from, when it was."""


class Timeline:
    """The ordered engine calls of one run, each with a sequence number and a timestamp.

    Feed it with :meth:`record` (after each call the engine accepted), through
    :meth:`wrap` (an Engine that records as it goes), or build it from a trace with
    :meth:`from_trace` / :meth:`from_events`. ``max_events`` bounds the memory: calls
    past it are counted in :attr:`dropped` and left out (the reports then say the
    timeline is truncated; hazards found later are listed without a place on it).
    """

    def __init__(
        self,
        *,
        max_events: int | None = None,
        clock: Callable[[], int] | None = time.perf_counter_ns,
        meta: Mapping[str, Any] | None = None,
    ):
        self._events: list[tuple[int | None, str, tuple]] = []
        self._lines: list[int] | None = None
        self._clock = clock
        self.max_events = max_events
        self.dropped = 0
        """Calls not recorded because of ``max_events``."""
        self.site_names: dict[int, str] = {}
        """Interned site ids (``Engine.intern``) -> their strings, to resolve int sites."""
        self.meta: dict[str, Any] = dict(meta or {})
        """Free-form facts about the run (a trace's header metadata, the command, ...)."""

    # -- recording ---------------------------------------------------------------------

    def record(self, op: str, /, *args: Any, **kwargs: Any) -> None:
        """Record one engine call: ``op`` is the Engine method, the arguments as for it."""
        spec = _OPS.get(op)
        if spec is None:
            raise ValueError(f"unknown engine op {op!r} (known: {', '.join(_OPS)})")
        if kwargs or len(args) != len(spec):
            args = _bind(op, args, kwargs)
        try:
            args = vocab.coerce(op, args)
        except vocab.BadArgument as exc:
            raise ValueError(str(exc)) from None
        self._append(op, args)

    def _append(self, op: str, args: tuple) -> None:
        # A call the recorder already checked (plain values, sites as strings).
        if self.max_events is not None and len(self._events) >= self.max_events:
            self.dropped += 1
            return
        self._events.append((self._clock() if self._clock else None, op, args))

    def record_rows(self, rows: Any) -> None:
        """Record bulk-path rows ``[code, a, b, c]`` (as given to ``Engine.replay``)."""
        rows = rows.tolist() if hasattr(rows, "tolist") else rows
        for code, a, b, c in rows:
            bulk = vocab.BULK[int(code)]
            self._append(bulk.op, bulk.args(int(a), int(b), int(c)))

    def wrap(self, engine: Any = None) -> TimelineEngine:
        """An Engine (``engine``, or a new one) whose every accepted call is also recorded."""
        return TimelineEngine(self, engine)

    # -- building ----------------------------------------------------------------------

    @classmethod
    def from_events(
        cls, events: Iterable[Any], *, meta: Mapping[str, Any] | None = None
    ) -> Timeline:
        """A timeline of trace events: dicts ``{"op": ..., <named args>}`` (an optional
        ``"t_ns"`` key gives the timestamp) or objects with ``op``, ``args`` (positional, in
        the Engine's order) and optionally ``line`` (``trace.TraceEvent``)."""
        timeline = cls(clock=None, meta=meta)
        lines: list[int] = []
        for index, item in enumerate(events):
            if isinstance(item, Mapping):
                obj = dict(item)
                op = obj.pop("op", None)
                t_ns = obj.pop("t_ns", None)
                if op not in _OPS:
                    raise ValueError(f"event {index}: unknown op {op!r}")
                args = _bind(op, (), obj)
                line = None
            else:
                op, args, t_ns = item.op, tuple(item.args), None
                if op not in _OPS:
                    raise ValueError(f"event {index}: unknown op {op!r}")
                if len(args) != len(_OPS[op]):
                    args = _bind(op, args, {})
                line = getattr(item, "line", None)
            timeline._events.append((t_ns, op, args))
            lines.append(line if isinstance(line, int) else -1)
        if any(line >= 0 for line in lines):
            timeline._lines = lines
        return timeline

    @classmethod
    def from_trace(cls, path: str | os.PathLike) -> Timeline:
        """A timeline of a trace file (``docs/TRACE-FORMAT.md``); raises ``TraceError``."""
        from esper_lifetimes.trace import read_trace

        trace = read_trace(path)
        meta: dict[str, Any] = {"trace": os.fspath(path)}
        metadata = getattr(trace, "metadata", None)
        if metadata:
            meta["trace_metadata"] = metadata
        timeline = cls.from_events(trace, meta=meta)
        if trace.cut_at is not None:
            timeline.meta["trace_cut_at"] = trace.cut_at
        return timeline

    # -- reading -----------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._events)

    def __iter__(self) -> Iterator[TimelineEvent]:
        for seq, (t_ns, op, args) in enumerate(self._events):
            yield self._event(seq, t_ns, op, args)

    def __getitem__(self, seq: int) -> TimelineEvent:
        t_ns, op, args = self._events[seq]
        return self._event(seq if seq >= 0 else len(self._events) + seq, t_ns, op, args)

    def _event(self, seq: int, t_ns: int | None, op: str, args: tuple) -> TimelineEvent:
        named = {name: value for (name, _), value in zip(_OPS[op], args, strict=True)}
        line = self._lines[seq] if self._lines is not None and self._lines[seq] >= 0 else None
        return TimelineEvent(seq, t_ns, op, named, line)

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def to_events(self) -> list[dict[str, Any]]:
        """The calls as trace-format dicts (sites as strings, defaults left out)."""
        out = []
        for _t_ns, op, args in self._events:
            obj: dict[str, Any] = {"op": op}
            for (name, default), value in zip(_OPS[op], args, strict=True):
                if name == "site":
                    value = self._site(value)
                if default is _R or value != default:
                    obj[name] = value
            out.append(obj)
        return out

    def _site(self, site: Any) -> str | None:
        if site is None or type(site) is str:
            return site
        if type(site) is int:
            return self.site_names.get(site, f"site#{site}")
        return str(site)

    def replay(self, engine: Any = None) -> Engine:
        """Apply every call to ``engine`` (a new Engine by default) and return it.
        Calls the engine rejects are skipped."""
        return analyze(self, engine=engine).engine

    def __repr__(self) -> str:
        extra = f", dropped={self.dropped}" if self.dropped else ""
        return f"<Timeline {len(self._events)} events{extra}>"


class TimelineEngine(Recorder):
    """An Engine that records each call it accepts on a :class:`Timeline` (the one
    recording proxy, :class:`esper_lifetimes.recording.Recorder`).

    Methods have the Engine's signatures and return values; read-only ones (``hazards``,
    ``stats``, ...) are forwarded. A call the engine rejects is not recorded.
    """

    def __init__(self, timeline: Timeline, engine: Any = None):
        super().__init__(timeline._append, engine, site_names=timeline.site_names)
        self.timeline = timeline


# --------------------------------------------------------------------------------------
# Hazards as plain dicts
# --------------------------------------------------------------------------------------

_HAZARD_FIELDS = vocab.HAZARD_FIELDS


def hazard_dict(hazard: Any) -> dict[str, Any]:
    """A Hazard (or a dict of its fields, e.g. from ``Hazard.to_dict()``) as a plain dict."""
    if isinstance(hazard, Mapping):
        src = hazard
        d = {name: src.get(name) for name in _HAZARD_FIELDS}
    else:
        d = {name: getattr(hazard, name, None) for name in _HAZARD_FIELDS}
    if d["severity"] is None:
        info = vocab.kind(d["kind"])
        d["severity"] = info.severity if info is not None else "error"
    if d["count"] is None:
        d["count"] = 1
    if d["message"] is None:
        d["message"] = str(d["kind"])
    return d


_hazard_key = vocab.dedup_key


def _stream_label(handle: int) -> str:
    return f"stream {handle & 0xFFFFFFFFFFFFFFFF:#x}"


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value & 0xFFFFFFFFFFFFFFFF:#x}"


def _size(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    if nbytes < 1024:
        return f"{nbytes} B"
    value = float(nbytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.3g} {unit}"
    return f"{nbytes} B"  # unreachable


def _roles(h: Mapping[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """The (role, site, stream name) lines a report shows for a hazard, in story order."""
    kind = h["kind"]
    alloc = ("allocated", h["alloc_site"], h["alloc_stream_name"])
    if kind == "unsynced-free":
        rows = [alloc, ("uncovered use", h["use_site"], h["use_stream_name"])]
        rows.append(("freed", h["free_site"], None))
    elif kind == "reuse-race":
        rows = [alloc, ("uncovered use", h["use_site"], h["use_stream_name"])]
        rows.append(("freed", h["free_site"], None))
        rows.append(("reallocated", h["other_site"], h["other_stream_name"]))
    elif kind == "unsynced-access":
        rows = [alloc, ("earlier access", h["other_site"], h["other_stream_name"])]
        rows.append(("racing access", h["use_site"], h["use_stream_name"]))
    elif kind in ("host-read-before-copy", "host-write-during-copy"):
        verb = "host read" if kind == "host-read-before-copy" else "host write"
        rows = [("copy", h["use_site"], h["use_stream_name"]), (verb, h["other_site"], None)]
    elif kind == "redundant-record-stream":
        rows = [alloc, ("record_stream", h["use_site"], h["use_stream_name"])]
        if h["free_site"] is not None:
            rows.append(("freed", h["free_site"], None))
    else:
        rows = [
            alloc,
            ("use", h["use_site"], h["use_stream_name"]),
            ("freed", h["free_site"], None),
            ("other", h["other_site"], h["other_stream_name"]),
        ]
    return [r for r in rows if r[1] is not None or r[2] is not None]


def _streams_of(h: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for name in (h["alloc_stream_name"], h["use_stream_name"], h["other_stream_name"]):
        if name is not None and name not in out:
            out.append(name)
    return out


_SITE_RE = re.compile(r"^(?P<file>.+?):(?P<line>\d+)(?=$|[\s:,(])")


class _Sources:
    """Source lines of sites ``file:line``: from given texts, else from readable files."""

    def __init__(self, sources: Mapping[str, str] | None, read_files: bool):
        self._texts: dict[str, list[str]] = {}
        for name, text in (sources or {}).items():
            self._texts[name] = text.splitlines()
            self._texts.setdefault(os.path.basename(name), self._texts[name])
        self._read_files = read_files
        self._cache: dict[str, str | None] = {}

    def line(self, site: str | None) -> str | None:
        if site is None:
            return None
        if site in self._cache:
            return self._cache[site]
        text = None
        m = _SITE_RE.match(site)
        if m:
            path, lineno = m.group("file"), int(m.group("line"))
            lines = self._texts.get(path) or self._texts.get(os.path.basename(path))
            if lines is not None:
                if 1 <= lineno <= len(lines):
                    text = lines[lineno - 1]
            elif self._read_files and os.path.isfile(path):
                text = linecache.getline(path, lineno) or None
        text = text.strip() if text else None
        self._cache[site] = text or None
        return self._cache[site]


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
        return s.name if s else _stream_label(handle)

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
    by_key = {_hazard_key(h.fields): h for h in a.replayed}
    if hazards is None:
        a.hazards = a.replayed
    else:
        a.hazards = []
        for index, given in enumerate(hazards, start=1):
            d = hazard_dict(given)
            found = by_key.get(_hazard_key(d))
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
            s = _Stream(handle, _stream_label(handle), False, len(self.a.streams))
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
            if op in _HAS_SITE:
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
        maybe_repeat = getattr(self, "op_" + op)(seq, *args)
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
            add(op, seq, stream, args[-1] if op in _HAS_SITE else None)
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


def _analysis(timeline: Any, hazards: Iterable[Any] | None) -> Analysis | None:
    if timeline is None:
        return None
    if isinstance(timeline, Analysis):
        return timeline if hazards is None else analyze(timeline.timeline, hazards)
    return analyze(timeline, hazards)


def _hazard_list(hazards: Iterable[Any] | None, analysis: Analysis | None) -> list[dict]:
    if hazards is None:
        if analysis is None:
            raise ValueError("give the hazards, or a timeline to find them in")
        return [h.fields for h in analysis.hazards]
    return [hazard_dict(h) for h in hazards]


def _grouped(hazards: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """kind -> indexes into ``hazards``, kinds in report order."""
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hazards):
        groups.setdefault(h["kind"], []).append(i)
    return {k: groups[k] for k in sorted(groups, key=_kind_order)}


def _summary(hazards: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {}
    for kind, idx in _grouped(hazards).items():
        kinds[kind] = {
            "severity": hazards[idx[0]]["severity"],
            "distinct": len(idx),
            "occurrences": sum(hazards[i]["count"] for i in idx),
        }
    errors = sum(1 for h in hazards if h["severity"] == "error")
    return {
        "distinct": len(hazards),
        "occurrences": sum(h["count"] for h in hazards),
        "errors": errors,
        "advice": len(hazards) - errors,
        "kinds": kinds,
    }


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def write_text(
    hazards: Iterable[Any],
    file: IO[str] | None = None,
    *,
    timeline: Timeline | Analysis | None = None,
    sources: Mapping[str, str] | None = None,
    read_sources: bool = True,
    width: int = 100,
) -> None:
    """The human-readable report on ``file`` (stderr by default): hazards grouped by kind,
    errors first, each with its count, streams, storage and source lines.

    ``sources`` maps file names to their text, for source lines of sites ``file:line``;
    files that exist are read too unless ``read_sources`` is False.
    """
    out = sys.stderr if file is None else file
    hs = [hazard_dict(h) for h in hazards]
    src = _Sources(sources, read_sources)
    summary = _summary(hs)
    analysis = timeline if isinstance(timeline, Analysis) else None
    if isinstance(timeline, Timeline):
        tl: Timeline | None = timeline
    else:
        tl = analysis.timeline if analysis is not None else None
    if tl is not None:
        facts = [_plural(len(tl), "event")]
        if analysis is not None:
            facts.append(_plural(len(analysis.streams), "stream"))
            facts.append(_plural(len(analysis.storages), "storage"))
        if tl.truncated:
            facts.append(f"{tl.dropped} more not recorded")
        origin = tl.meta.get("trace")
        out.write(f"esper-lifetimes: {', '.join(facts)}{' from ' + origin if origin else ''}\n")
    if not hs:
        out.write("esper-lifetimes: no hazards found.\n")
        return
    out.write(
        f"esper-lifetimes: {_plural(summary['distinct'], 'distinct hazard')} "
        f"({_plural(summary['occurrences'], 'occurrence')}): "
        f"{_plural(summary['errors'], 'error')}, {summary['advice']} advice\n"
    )
    wrap = textwrap.TextWrapper(width=width, initial_indent="      ", subsequent_indent="      ")
    for kind, idx in _grouped(hs).items():
        info = summary["kinds"][kind]
        out.write(
            f"\n{kind} ({info['severity']}): {_plural(info['distinct'], 'distinct hazard')}, "
            f"{_plural(info['occurrences'], 'occurrence')}"
        )
        title = _kind_info(kind).title if kind in KINDS else ""
        out.write(f" -- {title}\n" if title else "\n")
        for i in idx:
            h = hs[i]
            streams = ", ".join(_streams_of(h))
            where = f"storage {_hex(h['ptr'])} ({_size(h['nbytes'])})"
            if kind.startswith("host-"):
                where = f"host memory {_hex(h['ptr'])} ({_size(h['nbytes'])})"
            live = "  [live: the use was still in flight]" if h["live"] else ""
            out.write(f"  #{i + 1}  x{h['count']}  {where}; streams: {streams}{live}\n")
            roles = _roles(h)
            rw = max(len(r[0]) for r in roles)
            sw = max(len(r[1] or "?") for r in roles)
            for role, site, stream in roles:
                on = f"on {stream}" if stream else ""
                line = f"      {role:<{rw}}  {site or '?':<{sw}}  {on}"
                code = src.line(site)
                if code:
                    line = f"{line:<{6 + rw + 2 + sw + 2 + 16}}| {code}"
                out.write(line.rstrip() + "\n")
            out.write("\n".join(wrap.wrap(h["message"])) + "\n")
        hint = _kind_info(kind).hint
        if hint:
            out.write(
                "\n".join(
                    textwrap.wrap(
                        "fix: " + hint,
                        width=width,
                        initial_indent="  ",
                        subsequent_indent="       ",
                    )
                )
                + "\n"
            )


# --------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the JSON report, version :data:`SCHEMA_VERSION`."""
    path = resources.files("esper_lifetimes").joinpath(
        "schemas", f"report-v{SCHEMA_VERSION}.schema.json"
    )
    return json.loads(path.read_text(encoding="utf-8"))


def _generator() -> str:
    try:
        from esper_lifetimes import __version__

        return f"esper-lifetimes {__version__}"
    except ImportError:  # pragma: no cover
        return "esper-lifetimes"


def report_dict(
    hazards: Iterable[Any] | None,
    timeline: Timeline | Analysis | None = None,
    meta: Mapping[str, Any] | None = None,
    *,
    sources: Mapping[str, str] | None = None,
    read_sources: bool = True,
) -> dict[str, Any]:
    """The JSON report as a dict (see ``docs/REPORTS.md`` and the schema)."""
    analysis = _analysis(timeline, hazards)
    hs = _hazard_list(hazards, analysis)
    placed = analysis.hazards if analysis is not None else None
    src = _Sources(sources, read_sources)
    out_meta: dict[str, Any] = {}
    if analysis is not None:
        out_meta.update(analysis.timeline.meta)
    out_meta.update(meta or {})
    items = []
    for i, h in enumerate(hs):
        item: dict[str, Any] = {"id": i + 1}
        item.update(h)
        item["streams"] = _streams_of(h)
        code = {}
        for name in ("alloc_site", "use_site", "free_site", "other_site"):
            text = src.line(h[name])
            if text is not None:
                code[name] = text
        item["source_lines"] = code
        if placed is not None:
            p = placed[i]
            item["opened_at"] = p.opened_seq
            item["occurrences_at"] = list(p.occurrences)
            item["anchors"] = [
                {k: x[k] for k in ("role", "seq", "stream", "site", "storage")} for x in p.anchors
            ]
            for x in item["anchors"]:
                x["stream_name"] = (
                    None if x["stream"] is None else analysis.stream_name(x["stream"])
                )
        else:
            item["opened_at"] = None
            item["occurrences_at"] = []
            item["anchors"] = []
        items.append(item)
    doc: dict[str, Any] = {
        "schema": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
        "generator": _generator(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "meta": _jsonable(out_meta),
        "summary": _summary(hs),
        "hazards": items,
        "timeline": None,
    }
    if analysis is not None:
        tl = analysis.timeline
        doc["timeline"] = {
            "events": len(tl),
            "dropped": tl.dropped,
            "clock": "wall" if analysis.has_wall_clock() else "sequence",
            "duration_us": _duration_us(analysis),
            "storages": len(analysis.storages),
            "rejected": [
                {"seq": seq, "op": op, "error": err} for seq, op, err in analysis.rejected
            ],
            "streams": [
                {
                    "handle": s.handle,
                    "name": s.name,
                    "virtual": s.virtual,
                    "storages": sum(1 for st in analysis.storages if st.stream == s.handle),
                }
                for s in analysis.streams.values()
            ],
        }
    return doc


def _duration_us(a: Analysis) -> float | None:
    if not a.has_wall_clock() or not len(a.timeline):
        return None
    return (a.timeline._events[-1][0] - a.timeline._events[0][0]) / 1000


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_json(
    path: str | os.PathLike | IO[str],
    hazards: Iterable[Any] | None,
    timeline: Timeline | Analysis | None = None,
    meta: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Write the JSON report (schema ``esper-lifetimes-report`` version 1); returns it.

    ``path`` is a path or an open text file. ``meta`` is a JSON object copied into
    ``meta`` (the command line, the program, ...). Hazards are placed on the timeline when
    one is given; ``hazards=None`` reports the hazards found by replaying it.
    """
    doc = report_dict(hazards, timeline, meta, **kwargs)
    _write(path, json.dumps(doc, indent=2) + "\n")
    return doc


def _write(path: str | os.PathLike | IO[str], text: str) -> None:
    if hasattr(path, "write"):
        path.write(text)  # type: ignore[union-attr]
        return
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


# --------------------------------------------------------------------------------------
# Chrome trace-event format (Perfetto, chrome://tracing)
# --------------------------------------------------------------------------------------

_PID = 1


def chrome_trace(
    timeline: Timeline | Analysis,
    hazards: Iterable[Any] | None = None,
    *,
    clock: str = "auto",
) -> dict[str, Any]:
    """The timeline as a Chrome trace-event JSON object (``{"traceEvents": [...]}``).

    One process; per stream one thread (track) carrying its work (reads, writes,
    copies, record_stream, event records and waits) and the hazards that opened on it,
    followed by threads holding that stream's storage lifetimes as complete events (as
    many as needed so that lifetimes on one thread never overlap); one host thread for
    synchronizations, queries and host accesses. Waits and syncs are also flow arrows,
    and each hazard is an instant event with a flow arrow from its uncovered use.
    ``clock``: ``"wall"`` (the recorded timestamps), ``"sequence"`` (1 us per event) or
    ``"auto"`` (wall when every event has a timestamp).
    """
    a = _analysis(timeline, hazards)
    assert a is not None
    n = len(a.timeline)
    wall = a.has_wall_clock() if clock == "auto" else clock == "wall"
    if wall and not a.has_wall_clock():
        raise ValueError("the timeline has no timestamps: use clock='sequence'")
    if wall:
        t0 = a.timeline._events[0][0] if n else 0

        def ts(seq: int) -> float:
            seq = min(max(seq, 0), n - 1)
            return round((a.timeline._events[seq][0] - t0) / 1000, 3)

        end_ts = ts(n - 1) + 1 if n else 1
    else:

        def ts(seq: int) -> float:
            return float(seq)

        end_ts = float(n)

    ev: list[dict[str, Any]] = []
    max_rows = max((s.rows for s in a.streams.values()), default=0)
    stride = max_rows + 1
    lanes = sorted(a.streams.values(), key=lambda s: s.lane)
    host_tid = 1 + len(lanes) * stride

    def work_tid(stream: int | None) -> int:
        return host_tid if stream is None else 1 + a.streams[stream].lane * stride

    ev.append(_meta("process_name", 0, {"name": "esper-lifetimes: CUDA streams"}))
    ev.append(_meta("process_sort_index", 0, {"sort_index": 0}))
    for s in lanes:
        tid = work_tid(s.handle)
        label = s.name + (" (virtual)" if s.virtual else "")
        ev.append(_meta("thread_name", tid, {"name": label}))
        ev.append(_meta("thread_sort_index", tid, {"sort_index": tid}))
        for row in range(s.rows):
            ev.append(_meta("thread_name", tid + 1 + row, {"name": f"{s.name} storages"}))
            ev.append(_meta("thread_sort_index", tid + 1 + row, {"sort_index": tid + 1 + row}))
    ev.append(_meta("thread_name", host_tid, {"name": "host"}))
    ev.append(_meta("thread_sort_index", host_tid, {"sort_index": host_tid}))

    for st in a.storages:
        start = ts(st.alloc_seq)
        stop = ts(st.free_seq) if st.free_seq is not None else end_ts
        args = {
            "storage": st.id,
            "ptr": _hex(st.ptr),
            "nbytes": st.nbytes,
            "alloc_stream": a.stream_name(st.stream),
            "alloc_site": st.alloc_site,
            "free_site": st.free_site,
            "freed": st.free_seq is not None,
            "uses": len(st.uses),
            "streams_used_on": sorted({a.stream_name(u[1]) or "" for u in st.uses}),
            "record_stream": sorted({a.stream_name(r[1]) or "" for r in st.records}),
            "hazards": list(st.hazards),
        }
        item = {
            "name": f"storage {_hex(st.ptr)} ({_size(st.nbytes)})",
            "cat": "storage",
            "ph": "X",
            "ts": start,
            "dur": max(stop - start, 0.0),
            "pid": _PID,
            "tid": work_tid(st.stream) + 1 + st.row,
            "args": args,
        }
        if st.hazards:
            item["cname"] = "terrible"
        ev.append(item)

    for seq, what, stream, info in a.marks:
        args = {"seq": seq}
        for k, v in info.items():
            if k in ("ptr", "host_ptr", "event"):
                v = _hex(v)
            elif k in ("stream", "waited"):
                v = a.stream_name(v)
            args[k] = v
        name = what
        if what == "wait_stream":
            name = f"wait_stream({a.stream_name(info['waited'])})"
        elif what in ("stream_synchronize", "stream_query"):
            name = f"{what}({a.stream_name(info['stream'])})"
        ev.append(
            {
                "name": name,
                "cat": _mark_cat(what),
                "ph": "i",
                "s": "t",
                "ts": ts(seq),
                "pid": _PID,
                "tid": work_tid(stream),
                "args": args,
            }
        )

    flow_id = 0
    for what, src, src_seq, dst, dst_seq in a.links:
        if what == "device_synchronize":
            continue
        flow_id += 1
        ev.append(_flow("s", what, flow_id, ts(src_seq), work_tid(src)))
        ev.append(_flow("f", what, flow_id, ts(dst_seq), work_tid(dst)))

    for h in a.hazards:
        d = h.fields
        if h.opened_seq is None:
            continue
        args = {
            "id": h.index,
            "kind": d["kind"],
            "severity": d["severity"],
            "count": d["count"],
            "live": d["live"],
            "message": d["message"],
            "streams": _streams_of(d),
            "sites": {r: s for r, s, _ in _roles(d) if s is not None},
        }
        paths = {p[-1]["seq"]: p for p in h.paths if p}
        for n_occ, seq in enumerate(h.occurrences):
            path = paths.get(seq) or []
            opened = next((x for x in path if x["seq"] == seq), None)
            tid = work_tid(opened["stream"] if opened else None)
            item = {
                "name": f"HAZARD {d['kind']} #{h.index}" + (" (repeat)" if n_occ else ""),
                "cat": f"hazard,{d['severity']}",
                "ph": "i",
                "s": "t",
                "ts": ts(seq),
                "pid": _PID,
                "tid": tid,
                "cname": "terrible" if d["severity"] == "error" else "yellow",
                "args": dict(args, seq=seq, occurrence=n_occ + 1),
            }
            if n_occ:
                item["args"] = {"id": h.index, "seq": seq, "occurrence": n_occ + 1}
            ev.append(item)
            if path and path[0]["seq"] != seq:
                flow_id += 1
                first = path[0]
                ev.append(
                    _flow("s", "hazard", flow_id, ts(first["seq"]), work_tid(first["stream"]))
                )
                ev.append(_flow("f", "hazard", flow_id, ts(seq), tid))

    return {
        "traceEvents": ev,
        "displayTimeUnit": "ns" if not wall else "ms",
        "otherData": {
            "schema": CHROME_TRACE_SCHEMA,
            "version": 1,
            "generator": _generator(),
            "clock": "wall" if wall else "sequence",
            "events": n,
            "dropped": a.timeline.dropped,
            "hazards": len(a.hazards),
        },
    }


def _meta(name: str, tid: int, args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ph": "M", "pid": _PID, "tid": tid, "args": args}


def _flow(ph: str, cat: str, fid: int, ts: float, tid: int) -> dict[str, Any]:
    e = {"name": cat, "cat": cat, "ph": ph, "id": fid, "ts": ts, "pid": _PID, "tid": tid}
    if ph == "f":
        e["bp"] = "e"
    return e


def _mark_cat(what: str) -> str:
    if what in ("read", "write"):
        return "use"
    if what.startswith("copy_"):
        return "copy"
    if what.startswith("host_"):
        return "host"
    if what in ("record_stream",):
        return "lifetime"
    return "sync"


def write_chrome_trace(
    path: str | os.PathLike | IO[str],
    timeline: Timeline | Analysis,
    hazards: Iterable[Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Write :func:`chrome_trace` to ``path`` (open it in https://ui.perfetto.dev or
    chrome://tracing); returns the object written."""
    doc = chrome_trace(timeline, hazards, **kwargs)
    _write(path, json.dumps(doc, separators=(",", ":")) + "\n")
    return doc


# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------

_MARK_CODES = {
    "read": 0,
    "write": 1,
    "copy_to_host": 2,
    "copy_from_host": 3,
    "record_stream": 4,
    "event_record": 5,
    "host_read": 6,
    "host_write": 7,
    "stream_query": 8,
    "event_query": 8,
    "event_wait": 9,
    "wait_stream": 9,
    "stream_synchronize": 10,
    "event_synchronize": 10,
    "device_synchronize": 11,
}
_LINK_CODES = {"wait_stream": 0, "event_wait": 1, "synchronize": 2, "device_synchronize": 3}
_NO_COLUMN = ("define_stream", "forget_event", "host_release")


def _html_data(
    a: Analysis,
    hs: list[dict[str, Any]],
    src: _Sources,
    title: str,
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    sites: list[str] = []
    site_ix: dict[str, int] = {}

    def si(site: str | None) -> int:
        if site is None:
            return -1
        i = site_ix.get(site)
        if i is None:
            i = site_ix[site] = len(sites)
            sites.append(site)
        return i

    cols: list[int] = []
    col = 0
    for _t, op, _args in a.timeline._events:
        cols.append(col)
        if op not in _NO_COLUMN:
            col += 1
    ncols = max(col, 1)

    def c(seq: int | None) -> int:
        if seq is None:
            return -1
        return cols[seq] if 0 <= seq < len(cols) else ncols - 1

    lanes = sorted(a.streams.values(), key=lambda s: s.lane)
    lane_of = {s.handle: i for i, s in enumerate(lanes)}
    host = len(lanes)

    def lane(stream: int | None) -> int:
        return host if stream is None else lane_of.get(stream, host)

    storages = [
        [
            lane(st.stream),
            st.row,
            c(st.alloc_seq),
            c(st.free_seq),
            _hex(st.ptr),
            st.nbytes,
            si(st.alloc_site),
            si(st.free_site),
            len(st.uses),
            sorted({lane(u[1]) for u in st.uses}),
            sorted({lane(r[1]) for r in st.records}),
            st.hazards,
        ]
        for st in a.storages
    ]
    marks = []
    for seq, what, stream, info in a.marks:
        ref = info.get("storage")
        if what in ("wait_stream",):
            ref = lane(info["waited"])
        elif what in ("stream_synchronize", "stream_query"):
            ref = lane(info["stream"])
        elif ref is None:
            ref = -1
        marks.append([c(seq), lane(stream), _MARK_CODES[what], si(info.get("site")), ref])
    links = [
        [
            _LINK_CODES[what],
            -1 if what == "device_synchronize" else lane(s),
            c(s_seq),
            lane(d),
            c(d_seq),
        ]
        for what, s, s_seq, d, d_seq in a.links
    ]
    hazards = []
    for h, d in zip(a.hazards, hs, strict=True):
        hazards.append(
            {
                "id": h.index,
                "kind": d["kind"],
                "severity": d["severity"],
                "count": d["count"],
                "live": d["live"],
                "message": d["message"],
                "opened": c(h.opened_seq),
                "occ": sorted({c(s) for s in h.occurrences}),
                "paths": [
                    [
                        [x["role"], lane(x["stream"]), c(x["seq"]), x["storage"], si(x["site"])]
                        for x in p
                    ]
                    for p in h.paths
                ],
                "roles": [[r, si(s), st] for r, s, st in _roles(d)],
            }
        )
    code = {}
    for i, site in enumerate(sites):
        text = src.line(site)
        if text:
            code[i] = text
    wall = a.has_wall_clock()
    times = [t for t, _, _ in a.timeline._events] if wall else None
    col_times = None
    if times:
        t0 = times[0]
        col_times = [0.0] * ncols
        for seq, cc in enumerate(cols):
            col_times[min(cc, ncols - 1)] = round((times[seq] - t0) / 1000, 1)
    return {
        "title": title,
        "meta": _jsonable(dict(meta)),
        "events": len(a.timeline),
        "dropped": a.timeline.dropped,
        "cols": ncols,
        "colTimes": col_times,
        "lanes": [
            {"name": s.name, "handle": _hex(s.handle), "virtual": s.virtual, "rows": s.rows}
            for s in lanes
        ]
        + [{"name": "host", "handle": None, "virtual": False, "rows": 0, "host": True}],
        "storages": storages,
        "marks": marks,
        "links": links,
        "hazards": hazards,
        "sites": sites,
        "code": code,
        "kinds": {
            k: {"color": v.color, "title": v.title, "hint": v.hint} for k, v in KINDS.items()
        },
    }


def html_report(
    timeline: Timeline | Analysis,
    hazards: Iterable[Any] | None = None,
    *,
    title: str | None = None,
    meta: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
    read_sources: bool = True,
) -> str:
    """The HTML report as a string: one self-contained page (inline CSS, JS and SVG)."""
    a = _analysis(timeline, hazards)
    assert a is not None
    hs = [h.fields for h in a.hazards]
    src = _Sources(sources, read_sources)
    all_meta = dict(a.timeline.meta)
    all_meta.update(meta or {})
    title = title or "esper-lifetimes report"
    data = _html_data(a, hs, src, title, all_meta)
    blob = json.dumps(data, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    summary = _summary(hs)
    return (
        _HTML_TEMPLATE.replace("%%TITLE%%", html.escape(title))
        .replace("%%SUMMARY%%", _html_summary(summary, a, all_meta))
        .replace("%%HAZARDS%%", _html_hazards(a, hs, src))
        .replace("%%CSS%%", _CSS)
        .replace("%%JS%%", _JS)
        .replace("%%DATA%%", blob)
    )


def _html_summary(summary: dict[str, Any], a: Analysis, meta: Mapping[str, Any]) -> str:
    e = html.escape
    parts = []
    for kind, info in summary["kinds"].items():
        color = _kind_info(kind).color
        parts.append(
            f'<span class="chip" style="--k:{color}"><b>{e(kind)}</b> '
            f"{info['distinct']}&thinsp;/&thinsp;&times;{info['occurrences']}</span>"
        )
    if not parts:
        parts.append('<span class="chip ok"><b>no hazards</b></span>')
    facts = [
        _plural(len(a.timeline), "event"),
        _plural(len(a.streams), "stream"),
        _plural(len(a.storages), "storage"),
    ]
    if a.timeline.dropped:
        facts.append(f"{a.timeline.dropped} events not recorded")
    if a.rejected:
        facts.append(f"{len(a.rejected)} events rejected by the engine")
    origin = meta.get("trace") or meta.get("program") or meta.get("command")
    desc = meta.get("description")
    trace_meta = meta.get("trace_metadata")
    if not desc and isinstance(trace_meta, Mapping):
        desc = trace_meta.get("description")
    head = (
        f"{summary['errors']} error{'s' if summary['errors'] != 1 else ''}, "
        f"{summary['advice']} advice"
    )
    out = f'<div class="facts"><b>{e(head)}</b> &middot; {e(", ".join(facts))}'
    if origin:
        out += f" &middot; <code>{e(str(origin))}</code>"
    out += "</div>"
    if desc:
        out += f'<div class="desc">{e(str(desc))}</div>'
    return out + '<div class="chips">' + "".join(parts) + "</div>"


def _html_hazards(a: Analysis, hs: list[dict[str, Any]], src: _Sources) -> str:
    e = html.escape
    if not hs:
        return '<p class="none">No hazards found: every free, reuse and access was ordered.</p>'
    out = []
    pairs = sorted(zip(a.hazards, hs, strict=True), key=lambda p: _kind_order(p[1]["kind"]))
    for h, d in pairs:
        color = _kind_info(d["kind"]).color
        badges = [f'<span class="sev {e(d["severity"])}">{e(d["severity"])}</span>']
        if d["count"] > 1:
            badges.append(f'<span class="count">&times;{d["count"]}</span>')
        if d["live"]:
            badges.append(
                '<span class="live" title="the use was known to be in flight">live</span>'
            )
        if h.opened_seq is None:
            badges.append('<span class="unplaced">not on the timeline</span>')
        rows = []
        for role, site, stream in _roles(d):
            code = src.line(site)
            rows.append(
                "<tr>"
                f'<th>{e(role)}</th><td class="site">{e(site or "?")}</td>'
                f'<td class="on">{e(stream or "")}</td>'
                f'<td class="code">{e(code) if code else ""}</td>'
                "</tr>"
            )
        where = "host memory" if d["kind"].startswith("host-") else "storage"
        out.append(
            f'<div class="hz" id="hz{h.index}" data-hazard="{h.index}" '
            f'data-kind="{e(d["kind"])}" style="--k:{color}">'
            f'<div class="hzhead"><span class="num">{h.index}</span>'
            f'<span class="kind">{e(d["kind"])}</span>{"".join(badges)}'
            f'<span class="what">{where} <code>{e(_hex(d["ptr"]) or "?")}</code> '
            f"({e(_size(d['nbytes']))}) &middot; {e(', '.join(_streams_of(d)))}</span></div>"
            f'<table class="roles">{"".join(rows)}</table>'
            f'<div class="msg">{e(d["message"])}</div>'
            f'<div class="hint">{e(_kind_info(d["kind"]).hint)}</div>'
            "</div>"
        )
    return "".join(out)


def write_html(
    path: str | os.PathLike | IO[str],
    timeline: Timeline | Analysis,
    hazards: Iterable[Any] | None = None,
    **kwargs: Any,
) -> None:
    """Write :func:`html_report` to ``path``."""
    _write(path, html_report(timeline, hazards, **kwargs))


# --------------------------------------------------------------------------------------
# All at once
# --------------------------------------------------------------------------------------


def write_all(
    report_dir: str | os.PathLike,
    hazards: Iterable[Any] | None,
    timeline: Timeline | Analysis | None,
    *,
    meta: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
    read_sources: bool = True,
    title: str | None = None,
) -> dict[str, str]:
    """Write ``report.txt``, ``report.json`` and, with a timeline, ``trace.json`` (Chrome
    trace) and ``report.html`` into ``report_dir`` (created); returns {format: path}.

    ``timeline`` may be an :class:`Analysis` (then it is not replayed again)."""
    os.makedirs(report_dir, exist_ok=True)
    analysis = analyze(timeline, hazards) if timeline is not None else None
    hs = (
        [h.fields for h in analysis.hazards]
        if analysis is not None
        else [hazard_dict(h) for h in hazards or ()]
    )
    paths = {
        "text": os.path.join(report_dir, "report.txt"),
        "json": os.path.join(report_dir, "report.json"),
    }
    with open(paths["text"], "w", encoding="utf-8", newline="\n") as f:
        write_text(hs, f, timeline=analysis, sources=sources, read_sources=read_sources)
    write_json(
        paths["json"],
        None if analysis is not None else hs,
        analysis,
        meta,
        sources=sources,
        read_sources=read_sources,
    )
    if analysis is not None:
        paths["chrome_trace"] = os.path.join(report_dir, "trace.json")
        paths["html"] = os.path.join(report_dir, "report.html")
        write_chrome_trace(paths["chrome_trace"], analysis)
        write_html(
            paths["html"],
            analysis,
            title=title,
            meta=meta,
            sources=sources,
            read_sources=read_sources,
        )
    return paths


# --------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------

_HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="esper-lifetimes">
<title>%%TITLE%%</title>
<style>%%CSS%%</style>
</head>
<body>
<header>
<h1>%%TITLE%%</h1>
%%SUMMARY%%
</header>
<section id="timeline-section">
<div class="toolbar">
<div id="legend" class="legend"></div>
<div class="zoom">
<label><input type="checkbox" id="show-sync" checked> waits &amp; syncs</label>
<button id="zoom-out" title="zoom out">&minus;</button>
<button id="zoom-fit" title="fit to width">fit</button>
<button id="zoom-in" title="zoom in">+</button>
</div>
</div>
<div id="timeline" class="timeline">
<div id="labels" class="labels"></div>
<div id="scroll" class="scroll"></div>
</div>
<noscript><p class="none">The timeline is drawn by JavaScript; the hazards are listed below.</p></noscript>
</section>
<section id="hazards-section">
<h2>Hazards</h2>
<div id="hazards">%%HAZARDS%%</div>
</section>
<div id="tip" class="tip" hidden></div>
<script type="application/json" id="report-data">%%DATA%%</script>
<script>%%JS%%</script>
</body>
</html>
"""

_CSS = """
:root { --fg:#1f2329; --muted:#6b7280; --line:#e5e7eb; --bg:#ffffff; --panel:#f8f9fb; }
* { box-sizing: border-box; }
body { margin:0; font:13px/1.45 "DejaVu Sans","Segoe UI",Helvetica,Arial,sans-serif;
  color:var(--fg); background:var(--bg); }
code, .site, .code, .mono { font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace; font-size:12px; }
header { padding:12px 20px 8px; border-bottom:1px solid var(--line); background:var(--panel); }
h1 { font-size:17px; margin:0 0 4px; }
h2 { font-size:15px; margin:14px 20px 8px; }
.facts { color:var(--muted); }
.facts b { color:var(--fg); }
.desc { color:var(--muted); margin-top:2px; max-width:1100px; }
.chips { margin-top:6px; display:flex; flex-wrap:wrap; gap:6px; }
.chip { border:1px solid var(--k); border-left:6px solid var(--k); border-radius:4px;
  padding:1px 8px; background:#fff; }
.chip.ok { --k:#2b8a3e; }
.toolbar { display:flex; align-items:center; justify-content:space-between; gap:12px;
  padding:8px 20px 4px; }
.legend { display:flex; flex-wrap:wrap; gap:4px 14px; align-items:center; color:#374151; }
.legend .item { display:inline-flex; align-items:center; gap:5px; }
.legend svg { overflow:visible; }
.zoom { white-space:nowrap; color:var(--muted); }
.zoom button { font:inherit; min-width:30px; margin-left:3px; border:1px solid #cbd5e1;
  background:#fff; border-radius:4px; cursor:pointer; }
.timeline { display:flex; margin:0 20px; border:1px solid var(--line); border-radius:6px;
  overflow:hidden; }
.labels { flex:0 0 150px; position:relative; border-right:1px solid var(--line);
  background:var(--panel); }
.labels .lab { position:absolute; left:0; right:0; padding:4px 8px; overflow:hidden;
  border-bottom:1px solid var(--line); }
.labels .lab b { display:block; white-space:nowrap; overflow:hidden; text-overflow:ellipsis; }
.labels .lab span { display:block; color:var(--muted); font-size:11px; white-space:nowrap;
  overflow:hidden; text-overflow:ellipsis; }
.scroll { flex:1 1 auto; overflow-x:auto; overflow-y:hidden; position:relative; }
svg text { font-family:"DejaVu Sans",Helvetica,Arial,sans-serif; }
.storage rect.bar { fill:#dfe7f0; stroke:#9fb0c3; stroke-width:1; }
.storage.hz rect.bar { fill:#fdf0f0; stroke-width:1.6; }
.storage:hover rect.bar, .storage.hl rect.bar { fill:#c8d8ea; stroke:#3b5b7d; }
.storage.open rect.bar { stroke-dasharray:4 2; }
.hazard-link { cursor:pointer; }
.hazard-link path.wire { fill:none; stroke-width:2.6; stroke-linecap:round; opacity:.92; }
.hazard-link.advice path.wire { stroke-dasharray:6 4; stroke-width:2.2; }
.hazard-link:hover path.wire, .hazard-link.hl path.wire { stroke-width:4.5; opacity:1; }
.dim .hazard-link:not(.hl) { opacity:.18; }
.sync-layer.hidden { display:none; }
.tip { position:fixed; z-index:10; max-width:560px; background:#111827; color:#f9fafb;
  padding:7px 10px; border-radius:6px; font-size:12px; pointer-events:none;
  box-shadow:0 4px 14px rgba(0,0,0,.25); white-space:pre-wrap; }
#hazards { padding:0 20px 24px; display:grid; gap:10px; }
.hz { border:1px solid var(--line); border-left:6px solid var(--k); border-radius:6px;
  padding:8px 12px; background:#fff; }
.hz.hl { box-shadow:0 0 0 2px var(--k); }
.hzhead { display:flex; flex-wrap:wrap; align-items:center; gap:8px; margin-bottom:4px; }
.hzhead .num { display:inline-grid; place-items:center; width:22px; height:22px;
  border-radius:50%; background:var(--k); color:#fff; font-weight:bold; font-size:12px; }
.hzhead .kind { font-weight:bold; color:var(--k); font-size:14px; }
.hzhead .what { color:var(--muted); }
.sev, .count, .live, .unplaced { border-radius:3px; padding:0 6px; font-size:11px;
  font-weight:bold; }
.sev.error { background:#ffe3e3; color:#c92a2a; }
.sev.advice { background:#e7f5ff; color:#1864ab; }
.count { background:#f1f3f5; color:#343a40; }
.live { background:#fff3bf; color:#a15c07; }
.unplaced { background:#f1f3f5; color:var(--muted); font-weight:normal; }
table.roles { border-collapse:collapse; margin:2px 0 4px; }
table.roles th { text-align:left; font-weight:normal; color:var(--muted); padding:1px 14px 1px 0;
  white-space:nowrap; }
table.roles td { padding:1px 14px 1px 0; vertical-align:top; }
table.roles td.on { color:#374151; white-space:nowrap; }
table.roles td.code { color:#0b5394; background:#f6f8fa; padding:1px 6px; border-radius:3px; }
table.roles td.code:empty { background:none; }
.msg { color:#374151; }
.hint { color:var(--muted); font-style:italic; margin-top:2px; }
.none { margin:8px 20px; color:#2b8a3e; }
"""

_JS = r"""
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var NS = ["http:", "", "www.w3.org", "2000", "svg"].join("/");
  var WORK_H = 30, ROW_H = 12, BAR_H = 9, LANE_PAD = 6, AXIS_H = 40, PAD_X = 14;
  var MAX_ROWS = 14, MAX_PATHS = 400;
  var MARK_NAMES = ["read", "write", "copy_to_host", "copy_from_host", "record_stream",
    "event_record", "host read", "host write", "query", "wait", "synchronize",
    "device_synchronize"];
  var LINK_NAMES = ["wait_stream", "event wait", "synchronize", "device_synchronize"];
  var C = { read: "#8b95a1", write: "#1f2937", copy: "#0b7285", rec: "#6741d9",
    ev: "#495057", wait: "#4dabf7", sync: "#2f9e44" };
  var scroll = document.getElementById("scroll");
  var labels = document.getElementById("labels");
  var tip = document.getElementById("tip");
  var px = 0, fitPx = 0;

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, attrs[k]); }
    if (parent) parent.appendChild(e);
    return e;
  }
  function title(e, text) { var t = el("title", {}, e); t.textContent = text; return e; }
  function site(i) { return i >= 0 ? D.sites[i] : null; }
  function siteLine(i) {
    if (i < 0) return "?";
    var code = D.code[i];
    return D.sites[i] + (code ? "   " + code : "");
  }
  function laneName(i) { return D.lanes[i] ? D.lanes[i].name : "?"; }
  function kindColor(k) { return (D.kinds[k] || { color: "#495057" }).color; }

  // lane geometry
  var laneY = [], laneH = [], y = AXIS_H;
  D.lanes.forEach(function (l, i) {
    var rows = Math.min(l.rows, MAX_ROWS);
    var h = Math.max(WORK_H + (rows ? rows * ROW_H + LANE_PAD : 0) + (l.host ? 0 : 4), 40);
    laneY.push(y); laneH.push(h); y += h;
  });
  var totalH = y + 6;
  function workY(lane) { return laneY[lane] + WORK_H / 2; }
  function rowY(lane, row) {
    return laneY[lane] + WORK_H + Math.min(row, MAX_ROWS - 1) * ROW_H + BAR_H / 2;
  }
  function X(col) { return PAD_X + (col + 0.5) * px; }

  // labels column
  D.lanes.forEach(function (l, i) {
    var d = document.createElement("div");
    d.className = "lab";
    d.style.top = laneY[i] + "px";
    d.style.height = laneH[i] + "px";
    var b = document.createElement("b");
    b.textContent = l.name + (l.virtual ? " (virtual)" : "");
    d.appendChild(b);
    var s = document.createElement("span");
    s.textContent = l.host ? "syncs, host access" : l.handle;
    d.appendChild(s);
    d.title = l.host ? "the host: synchronizations, queries, host reads and writes" :
      l.name + " (" + l.handle + "): its work on top, the storages allocated on it below" +
      (l.rows > MAX_ROWS ? " (" + l.rows + " rows, drawn on " + MAX_ROWS + ")" : "");
    labels.appendChild(d);
  });
  labels.style.height = totalH + "px";
  var axisLab = document.createElement("div");
  axisLab.className = "lab";
  axisLab.style.top = "0px"; axisLab.style.height = AXIS_H + "px";
  axisLab.style.color = "#6b7280"; axisLab.style.fontSize = "11px";
  axisLab.style.paddingTop = (AXIS_H - 20) + "px";
  axisLab.textContent = D.colTimes ? "time" : "event";
  labels.appendChild(axisLab);

  function showTip(evt, text) {
    tip.textContent = text; tip.hidden = false;
    var x = evt.clientX + 14, yy = evt.clientY + 14;
    if (x + tip.offsetWidth > window.innerWidth - 8) x = evt.clientX - tip.offsetWidth - 14;
    if (yy + tip.offsetHeight > window.innerHeight - 8) yy = evt.clientY - tip.offsetHeight - 14;
    tip.style.left = x + "px"; tip.style.top = yy + "px";
  }
  function hideTip() { tip.hidden = true; }
  function hover(e, textFn) {
    e.addEventListener("mousemove", function (evt) { showTip(evt, textFn()); });
    e.addEventListener("mouseleave", hideTip);
  }

  function arrowDefs(svg) {
    var defs = el("defs", {}, svg);
    function marker(id, color) {
      var m = el("marker", { id: id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7,
        markerHeight: 7, orient: "auto-start-reverse" }, defs);
      el("path", { d: "M0,0 L10,5 L0,10 z", fill: color }, m);
    }
    marker("arr-wait", C.wait); marker("arr-sync", C.sync);
    Object.keys(D.kinds).forEach(function (k) { marker("arr-" + k, D.kinds[k].color); });
    marker("arr-other", "#495057");
  }

  function storageText(i) {
    var s = D.storages[i];
    var lines = ["storage " + s[4] + " (" + s[5] + " bytes)",
      "allocated on " + laneName(s[0]) + " at " + siteLine(s[6]),
      s[3] >= 0 ? "freed at " + siteLine(s[7]) : "not freed in this run",
      s[8] + " use" + (s[8] === 1 ? "" : "s") + (s[9].length ? " on " + s[9].map(laneName).join(", ") : "")];
    if (s[10].length) lines.push("record_stream: " + s[10].map(laneName).join(", "));
    if (s[11].length) lines.push("hazards: " + s[11].map(function (h) { return "#" + h; }).join(", "));
    return lines.join("\n");
  }
  function hazardText(h) {
    var lines = ["#" + h.id + "  " + h.kind + " (" + h.severity + ")" +
      (h.count > 1 ? "  x" + h.count : "") + (h.live ? "  live" : "")];
    h.roles.forEach(function (r) {
      lines.push("  " + r[0] + ": " + siteLine(r[1]) + (r[2] ? "  [" + r[2] + "]" : ""));
    });
    lines.push("", h.message);
    return lines.join("\n");
  }

  function anchorPoint(a) {
    // a = [role, lane, col, storage, site]
    var lane = a[1], col = a[2], sid = a[3];
    if ((a[0] === "free" || a[0] === "realloc") && sid !== null && sid >= 0 && D.storages[sid]) {
      var s = D.storages[sid];
      if (!D.lanes[s[0]].host) return [X(col), rowY(s[0], s[1])];
    }
    return [X(col), workY(lane)];
  }

  function draw() {
    scroll.textContent = "";
    var W = Math.max(scroll.clientWidth, PAD_X * 2 + D.cols * px);
    var svg = el("svg", { width: W, height: totalH, id: "timeline-svg",
      "class": "timeline-svg" }, scroll);
    arrowDefs(svg);
    // lanes
    var gl = el("g", { "class": "lanes" }, svg);
    D.lanes.forEach(function (l, i) {
      var g = el("g", { "class": "lane" + (l.host ? " host" : ""), "data-lane": i, "data-name": l.name }, gl);
      el("rect", { x: 0, y: laneY[i], width: W, height: laneH[i],
        fill: l.host ? "#f3f6f4" : (i % 2 ? "#fafbfc" : "#ffffff") }, g);
      el("line", { x1: 0, x2: W, y1: laneY[i] + laneH[i] - 0.5, y2: laneY[i] + laneH[i] - 0.5,
        stroke: "#e5e7eb" }, g);
      el("line", { x1: 0, x2: W, y1: workY(i), y2: workY(i), stroke: "#d9dee4",
        "stroke-dasharray": "2 3" }, g);
    });
    // axis
    var ga = el("g", { "class": "axis" }, svg);
    el("rect", { x: 0, y: 0, width: W, height: AXIS_H, fill: "#f8f9fb" }, ga);
    var step = niceStep(60 / px);
    for (var c = 0; c < D.cols; c += step) {
      el("line", { x1: X(c), x2: X(c), y1: AXIS_H - 5, y2: totalH, stroke: "#eef0f3" }, ga);
      var t = el("text", { x: X(c), y: AXIS_H - 6, "font-size": 10, fill: "#6b7280",
        "text-anchor": "middle" }, ga);
      t.textContent = D.colTimes ? fmtTime(D.colTimes[c]) : String(c);
    }
    // storages
    var gs = el("g", { "class": "storages" }, svg);
    var end = D.cols - 1;
    D.storages.forEach(function (s, i) {
      var x1 = X(s[2]) - px * 0.35, x2 = X(s[3] >= 0 ? s[3] : end) + (s[3] >= 0 ? px * 0.35 : px * 0.5);
      var hz = s[11].length > 0;
      var g = el("g", { "class": "storage" + (hz ? " hz" : "") + (s[3] < 0 ? " open" : ""),
        "data-storage": i }, gs);
      var r = el("rect", { "class": "bar", x: x1, y: rowY(s[0], s[1]) - BAR_H / 2,
        width: Math.max(x2 - x1, 2), height: BAR_H, rx: 2 }, g);
      if (hz) {
        var hh = D.hazards.filter(function (h) { return h.id === s[11][0]; })[0];
        if (hh) r.style.stroke = kindColor(hh.kind);
      }
      // uses from other streams: dots on the bar
      hover(g, function () { return storageText(i); });
      g.addEventListener("mouseenter", function () { highlightStorage(i, true); });
      g.addEventListener("mouseleave", function () { highlightStorage(i, false); });
    });
    // foreign-stream uses as dots on the storage bars
    var gu = el("g", { "class": "uses" }, svg);
    var seenDot = {};
    D.marks.forEach(function (m) {
      if (m[2] > 1 || m[4] < 0) return;
      var s = D.storages[m[4]];
      if (!s || s[0] === m[1]) return;
      var key = m[4] + ":" + Math.round(X(m[0]));
      if (seenDot[key]) return; seenDot[key] = 1;
      el("circle", { cx: X(m[0]), cy: rowY(s[0], s[1]), r: Math.min(3, BAR_H / 2 - 0.5),
        fill: m[2] ? C.write : "#5c6b7a" }, gu);
    });
    // waits and syncs
    var gy = el("g", { "class": "sync-layer" + (document.getElementById("show-sync").checked ? "" : " hidden") }, svg);
    D.links.forEach(function (k) {
      var type = k[0];
      if (type === 3) {
        var g3 = el("g", { "class": "sync device" }, gy);
        el("line", { x1: X(k[4]), x2: X(k[4]), y1: AXIS_H, y2: workY(k[3]) - 7, stroke: C.sync,
          "stroke-width": 1.4, "stroke-dasharray": "5 3", "marker-end": "url(#arr-sync)" }, g3);
        title(g3, "torch.cuda.synchronize(): the host waits for every stream");
        return;
      }
      var x1 = X(k[2]), y1 = workY(k[1]), x2 = X(k[4]), y2 = workY(k[3]);
      var color = type === 2 ? C.sync : C.wait;
      var g = el("g", { "class": type === 2 ? "sync" : "wait" }, gy);
      var dy = y2 > y1 ? -7 : 7;
      var mx = (x1 + x2) / 2;
      el("path", { d: "M" + x1 + "," + y1 + " C" + mx + "," + y1 + " " + mx + "," + (y2 + dy) + " " + x2 + "," + (y2 + dy),
        fill: "none", stroke: color, "stroke-width": 1.3, "marker-end": type === 2 ? "url(#arr-sync)" : "url(#arr-wait)",
        opacity: 0.85 }, g);
      title(g, LINK_NAMES[type] + ": " + laneName(k[3]) + " waits for " + laneName(k[1]));
    });
    // marks (deduplicated per pixel)
    var gm = el("g", { "class": "marks" }, svg);
    var seen = {};
    D.marks.forEach(function (m) {
      var x = X(m[0]), yy = workY(m[1]), type = m[2];
      var key = m[1] + ":" + type + ":" + Math.round(x);
      if (seen[key]) return; seen[key] = 1;
      var e;
      if (type <= 1) {
        e = el("rect", { x: x - Math.max(1, Math.min(px * 0.3, 2.5)), y: yy - 9,
          width: 2 * Math.max(1, Math.min(px * 0.3, 2.5)), height: 18, rx: 1,
          fill: type ? C.write : C.read, "class": "mark use" }, gm);
      } else if (type <= 3) {
        e = el("path", { d: "M" + (x - 5) + "," + (yy - 6) + " L" + (x + 5) + "," + (yy - 6) +
          " L" + x + "," + (yy + 7) + " z", fill: C.copy, "class": "mark copy" }, gm);
        if (type === 3) e.setAttribute("transform", "rotate(180 " + x + " " + yy + ")");
      } else if (type === 4) {
        e = el("path", { d: "M" + x + "," + (yy - 7) + " l6,7 l-6,7 l-6,-7 z", fill: "#fff",
          stroke: C.rec, "stroke-width": 1.8, "class": "mark record" }, gm);
      } else if (type === 5) {
        e = el("circle", { cx: x, cy: yy, r: 4, fill: "#fff", stroke: C.ev, "stroke-width": 1.5,
          "class": "mark event" }, gm);
      } else if (type === 6 || type === 7) {
        e = el("rect", { x: x - 5, y: yy - 5, width: 10, height: 10, rx: 2,
          fill: type === 7 ? "#1f2937" : "#fff", stroke: "#1f2937", "stroke-width": 1.5,
          "class": "mark host" }, gm);
      } else if (type === 8) {
        e = el("circle", { cx: x, cy: yy, r: 4, fill: "#fff", stroke: "#868e96",
          "stroke-dasharray": "2 1.5", "class": "mark query" }, gm);
      } else if (type === 9) {
        e = el("circle", { cx: x, cy: yy, r: 3, fill: C.wait, "class": "mark wait" }, gm);
      } else {
        e = el("circle", { cx: x, cy: yy, r: 3.5, fill: C.sync, "class": "mark sync" }, gm);
      }
      var txt = MARK_NAMES[type] + (m[3] >= 0 ? " at " + siteLine(m[3]) : "") +
        (type <= 1 && m[4] >= 0 ? "\nstorage " + D.storages[m[4]][4] : "") +
        ((type === 9 || type === 10 || type === 8) && m[4] >= 0 && D.lanes[m[4]] ? " (" + laneName(m[4]) + ")" : "") +
        "\n" + laneName(m[1]) + ", event " + m[0];
      hover(e, function () { return txt; });
      if (m[4] >= 0 && type <= 1) e.setAttribute("data-storage", m[4]);
    });
    // hazards
    var gh = el("g", { "class": "hazards" }, svg);
    // errors drawn last (on top); unsynced-free over the reuse-race that shares its segment
    var order = ["redundant-record-stream", "host-write-during-copy", "host-read-before-copy",
      "unsynced-access", "reuse-race", "unsynced-free"];
    var sorted = D.hazards.slice().sort(function (a, b) {
      return order.indexOf(a.kind) - order.indexOf(b.kind) || a.id - b.id;
    });
    var crowded = D.hazards.length > 40, budget = MAX_PATHS, badgeX = [];
    sorted.forEach(function (h) {
      if (h.opened < 0) return;
      var color = kindColor(h.kind);
      var g = el("g", { "class": "hazard-link " + h.severity, "data-hazard": h.id, "data-kind": h.kind }, gh);
      if (!crowded) {
        el("line", { x1: X(h.opened), x2: X(h.opened), y1: 21, y2: totalH, stroke: color,
          "stroke-width": 1, "stroke-dasharray": "3 3", opacity: 0.55 }, g);
      }
      var lastX = -1e9, share = Math.max(4, Math.floor(MAX_PATHS / Math.max(D.hazards.length, 1)));
      var every = Math.max(1, Math.ceil(h.paths.length / share));
      h.paths.forEach(function (path, n) {
        if (!path.length) return;
        var endX = X(path[path.length - 1][2]);
        if (n > 0 && (n % every !== 0 || endX - lastX < 6 || budget <= 0)) return;
        lastX = endX;
        budget--;
        var pts = path.map(anchorPoint);
        if (pts.length > 1) {
          var d = "M" + pts[0][0] + "," + pts[0][1];
          for (var i = 1; i < pts.length; i++) {
            var p = pts[i - 1], q = pts[i], dx = Math.max(14, Math.abs(q[0] - p[0]) * 0.45);
            d += " C" + (p[0] + dx) + "," + p[1] + " " + (q[0] - dx) + "," + q[1] + " " + q[0] + "," + q[1];
          }
          el("path", { d: d, "class": "halo", stroke: "#fff", "stroke-width": 6, opacity: 0.85, fill: "none" }, g);
          el("path", { d: d, "class": "wire", stroke: color }, g);
        }
        pts.forEach(function (p, i) {
          var last = i === pts.length - 1;
          el("circle", { cx: p[0], cy: p[1], r: last ? 5.5 : 4.5, fill: last ? color : "#fff",
            stroke: color, "stroke-width": 2.2, "class": "anchor" + (last ? " opened" : "") }, g);
        });
      });
      h.occ.forEach(function (c) {
        if (c === h.opened) return;
        el("path", { d: "M" + X(c) + "," + (AXIS_H + 1) + " l5,8 l-10,0 z", fill: color, opacity: 0.8 }, g);
      });
      // badge at the top of the marker line, unless it would cover another one
      var bx = X(h.opened);
      var clash = badgeX.some(function (x) { return Math.abs(x - bx) < 19; });
      if (!clash) {
        badgeX.push(bx);
        el("circle", { cx: bx, cy: 12, r: 9, fill: color, stroke: "#fff", "stroke-width": 1.5,
          "class": "badge" }, g);
        var bt = el("text", { x: bx, y: 16, "text-anchor": "middle", "font-size": 11,
          "font-weight": "bold", fill: "#fff" }, g);
        bt.textContent = String(h.id);
      }
      title(g, hazardText(h));
      hover(g, function () { return hazardText(h); });
      g.addEventListener("mouseenter", function () { highlightHazard(h.id, true); });
      g.addEventListener("mouseleave", function () { highlightHazard(h.id, false); });
      g.addEventListener("click", function () {
        var card = document.getElementById("hz" + h.id);
        if (card) card.scrollIntoView({ behavior: "smooth", block: "center" });
      });
    });
  }

  function niceStep(min) {
    var steps = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];
    for (var i = 0; i < steps.length; i++) if (steps[i] >= min) return steps[i];
    return 200000;
  }
  function fmtTime(us) {
    if (us === undefined || us === null) return "";
    if (us >= 1e6) return (us / 1e6).toFixed(2) + "s";
    if (us >= 1e3) return (us / 1e3).toFixed(1) + "ms";
    return us.toFixed(0) + "\u00b5s";
  }
  function highlightStorage(i, on) {
    var nodes = scroll.querySelectorAll('[data-storage="' + i + '"]');
    for (var k = 0; k < nodes.length; k++) nodes[k].classList.toggle("hl", on);
  }
  function highlightHazard(id, on) {
    var svg = document.getElementById("timeline-svg");
    if (svg) svg.classList.toggle("dim", on);
    var nodes = document.querySelectorAll('[data-hazard="' + id + '"]');
    for (var k = 0; k < nodes.length; k++) nodes[k].classList.toggle("hl", on);
  }

  // legend
  (function legend() {
    var box = document.getElementById("legend");
    function item(draw, text) {
      var span = document.createElement("span"); span.className = "item";
      var s = el("svg", { width: 22, height: 14 }, span); draw(s);
      var t = document.createElement("span"); t.textContent = text; span.appendChild(t);
      box.appendChild(span);
    }
    item(function (s) { el("rect", { x: 1, y: 3, width: 20, height: 8, rx: 2, fill: "#dfe7f0", stroke: "#9fb0c3" }, s); }, "storage life");
    item(function (s) { el("rect", { x: 6, y: 0, width: 3, height: 14, fill: C.read }, s); el("rect", { x: 13, y: 0, width: 3, height: 14, fill: C.write }, s); }, "read / write");
    item(function (s) { el("circle", { cx: 11, cy: 7, r: 3, fill: "#5c6b7a" }, s); }, "use from another stream");
    item(function (s) { el("path", { d: "M11,0 l6,7 l-6,7 l-6,-7 z", fill: "#fff", stroke: C.rec, "stroke-width": 1.8 }, s); }, "record_stream");
    item(function (s) { el("path", { d: "M6,1 L16,1 L11,13 z", fill: C.copy }, s); }, "copy");
    item(function (s) { el("line", { x1: 1, y1: 7, x2: 19, y2: 7, stroke: C.wait, "stroke-width": 1.5, }, s); }, "wait");
    item(function (s) { el("line", { x1: 1, y1: 7, x2: 19, y2: 7, stroke: C.sync, "stroke-width": 1.5 }, s); }, "sync");
    var kinds = {};
    D.hazards.forEach(function (h) { kinds[h.kind] = 1; });
    Object.keys(kinds).forEach(function (k) {
      item(function (s) {
        el("path", { d: "M2,11 C8,11 12,3 18,3", fill: "none", stroke: kindColor(k), "stroke-width": 2.6 }, s);
        el("circle", { cx: 18, cy: 3, r: 3, fill: kindColor(k) }, s);
      }, k);
    });
  })();

  // hazard cards <-> timeline
  var cards = document.querySelectorAll(".hz[data-hazard]");
  for (var i = 0; i < cards.length; i++) {
    (function (card) {
      var id = card.getAttribute("data-hazard");
      card.addEventListener("mouseenter", function () { highlightHazard(id, true); });
      card.addEventListener("mouseleave", function () { highlightHazard(id, false); });
    })(cards[i]);
  }

  function fit() {
    var avail = Math.max(scroll.clientWidth - 2 * PAD_X, 200);
    fitPx = Math.max(0.25, Math.min(28, avail / Math.max(D.cols, 1)));
    px = fitPx; draw();
  }
  document.getElementById("zoom-in").addEventListener("click", function () { px = Math.min(px * 1.6, 80); draw(); });
  document.getElementById("zoom-out").addEventListener("click", function () { px = Math.max(px / 1.6, 0.1); draw(); });
  document.getElementById("zoom-fit").addEventListener("click", fit);
  document.getElementById("show-sync").addEventListener("change", function (ev) {
    var layers = document.querySelectorAll(".sync-layer");
    for (var k = 0; k < layers.length; k++) layers[k].classList.toggle("hidden", !ev.target.checked);
  });
  var resizeTimer = null;
  window.addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () { if (px === fitPx) fit(); }, 150);
  });
  fit();
  document.body.setAttribute("data-rendered", "1");
})();
"""
