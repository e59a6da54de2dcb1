"""The timeline: the engine calls of one run, in order, with their timestamps."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from esper_lifetimes import Engine, vocab
from esper_lifetimes.recording import Recorder

# --------------------------------------------------------------------------------------
# The timeline: the engine calls of one run, in order
# --------------------------------------------------------------------------------------

_R = vocab.REQUIRED

# op -> ((argument, default), ...), in the order of the Engine method's parameters.
_OPS: dict[str, tuple[tuple[str, Any], ...]] = {
    op: tuple((a.name, a.default) for a in spec.args) for op, spec in vocab.OPS.items()
}
OPS = tuple(_OPS)
HAS_SITE = frozenset(op for op, spec in vocab.OPS.items() if spec.has_site)


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
            args = vocab.bind(op, args, kwargs)
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
        if op == "launch":
            # Ranges kept as tuples of ints, which the garbage collector stops tracking:
            # a long timeline of lists made every collection slower (measured: a launch
            # recorded in 17 us with lists against 6 us with gc off, 50,000 launches).
            args = (args[0], tuple(args[1]), tuple(args[2]), args[3])
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
        ``"t_ns"`` key gives the timestamp; each is checked as a trace line is, a bad one
        is a ``TraceError``) or objects with ``op``, ``args`` (positional, in the Engine's
        order) and optionally ``line`` (``trace.TraceEvent``)."""
        from esper_lifetimes.trace import parse_event

        timeline = cls(clock=None, meta=meta)
        lines: list[int] = []
        for index, item in enumerate(events, start=1):
            if isinstance(item, Mapping):
                obj = dict(item)
                t_ns = obj.pop("t_ns", None)
                op, args = parse_event(obj, index)[:2]  # checked as a trace line is
                line = None
            else:
                op, args, t_ns = item.op, tuple(item.args), None
                if op not in _OPS:
                    raise ValueError(f"event {index}: unknown op {op!r}")
                if len(args) != len(_OPS[op]):
                    args = vocab.bind(op, args, {})
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
        if op == "launch":
            named["reads"], named["writes"] = list(named["reads"]), list(named["writes"])
        line = self._lines[seq] if self._lines is not None and self._lines[seq] >= 0 else None
        return TimelineEvent(seq, t_ns, op, named, line)

    @property
    def truncated(self) -> bool:
        return self.dropped > 0

    def to_events(self) -> list[dict[str, Any]]:
        """The calls as trace-format dicts (sites as strings, defaults left out)."""
        out = []
        for _t_ns, op, args in self._events:
            if op in HAS_SITE:
                args = args[:-1] + (self._site(args[-1]),)
            if op == "launch":
                args = (args[0], list(args[1]), list(args[2]), args[3])
            out.append(vocab.event_dict(op, args))
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
        from esper_lifetimes.reports.analysis import analyze

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
