"""Trace files: record engine events once, analyse them later.

A trace is a JSON Lines file (optionally gzip-compressed, by a ``.gz`` suffix): a header
object on line 1, then one object per engine call. The format is specified in
``docs/TRACE-FORMAT.md``; :data:`OPS` below is its machine-readable half.

>>> with TraceWriter("step.jsonl") as w:                      # doctest: +SKIP
...     rec = RecordingEngine(w)          # an Engine that also writes every call
...     rec.alloc(0x7F0000000000, 4096, 0, "train.py:42")
>>> engine = replay_trace("step.jsonl")                       # doctest: +SKIP
>>> engine.hazards()                                          # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from typing import IO, Any, NamedTuple

from esper_lifetimes import Engine, LifetimesError, vocab
from esper_lifetimes.recording import Recorder, op_method

__all__ = [
    "FORMAT",
    "VERSION",
    "OPS",
    "BULK_OPS",
    "TraceError",
    "TraceEvent",
    "Trace",
    "TraceWriter",
    "RecordingEngine",
    "read_trace",
    "replay_trace",
    "parse_event",
]

FORMAT = "esper-lifetimes-trace"
"""The value of the header's ``format`` key."""

VERSION = 2
"""The trace format version this module writes, and the highest it reads (version 2
added the ops ``adopt`` and ``flush``; this reader reads versions 1 and 2)."""

_REQUIRED = vocab.REQUIRED

# op -> ((argument, kind, default), ...) in the order of the Engine method's parameters.
OPS: dict[str, tuple[tuple[str, str, Any], ...]] = {
    op: tuple((a.name, a.type, a.default) for a in spec.args) for op, spec in vocab.OPS.items()
}

# Bulk-path op codes (ENGINE-API.md, "Bulk path") -> (op, how a row [code, a, b, c] maps
# to that op's positional arguments).
BULK_OPS: dict[int, tuple[str, Any]] = {code: (b.op, b.args) for code, b in vocab.BULK.items()}


class TraceError(LifetimesError):
    """A trace file (or event) that cannot be read or replayed.

    ``str(error)`` starts with ``where:`` (``path:line`` for a file, ``event N`` for an
    in-memory event); ``error.line`` holds the line (or event) number, or ``None``.
    """

    def __init__(self, message: str, *, where: str | None = None, line: int | None = None):
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where
        self.line = line


class TraceEvent(NamedTuple):
    """One engine call read from a trace: ``getattr(engine, op)(*args)`` replays it."""

    op: str
    args: tuple
    line: int
    """Line number in the file (1 is the header), or the event's 1-based index."""

    def arguments(self) -> dict[str, Any]:
        """The named arguments, defaults included."""
        return {spec[0]: value for spec, value in zip(OPS[self.op], self.args, strict=True)}

    def to_json(self) -> dict[str, Any]:
        """The event as its trace object: ``op`` then the arguments not at their default."""
        return vocab.event_dict(self.op, self.args)

    def apply(self, engine: Any) -> Any:
        """Call the engine method this event stands for."""
        return getattr(engine, self.op)(*self.args)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _coerce(op: str, values: Iterable[Any]) -> tuple[tuple | None, str | None]:
    """(plain values, None), or (None, why not): the vocabulary's one rule, sites as strings."""
    try:
        return vocab.coerce(op, tuple(values), site_ids=False), None
    except vocab.BadArgument as exc:
        return None, str(exc)


def _event_from_json(obj: Any, line: int) -> tuple[TraceEvent | None, str | None]:
    """Validate one decoded trace object; returns (event, None) or (None, reason)."""
    if type(obj) is not dict:
        return None, f"expected a JSON object, got {_type_name(obj)}"
    op = obj.get("op")
    if op is None:
        return None, "missing 'op'"
    specs = OPS.get(op) if type(op) is str else None
    if specs is None:
        return None, f"unknown op {op!r} (known ops: {', '.join(sorted(OPS))})"
    args = []
    present = 1  # "op"
    for name, _kind, default in specs:
        if name in obj:
            value = obj[name]
            present += 1
        elif default is _REQUIRED:
            return None, f"{op}: missing argument '{name}'"
        else:
            value = default
        args.append(value)
    if len(obj) > present:
        known = [spec[0] for spec in specs]
        extra = sorted(k for k in obj if k != "op" and k not in known)
        allowed = ", ".join(known) if known else "none"
        return None, f"{op}: unknown argument(s) {', '.join(map(repr, extra))} (allowed: {allowed})"
    values, reason = _coerce(op, args)
    if reason:
        return None, reason
    return TraceEvent(op, values, line), None


def parse_event(obj: Any, index: int) -> TraceEvent:
    """One event object (``{"op": "alloc", "ptr": ..., ...}``) checked as the reader
    checks a line; raises :class:`TraceError` naming ``event INDEX``."""
    event, reason = _event_from_json(obj, index)
    if reason:
        raise TraceError(reason, where=f"event {index}", line=index)
    return event  # type: ignore[return-value]


def _check_header(obj: Any) -> str | None:
    if type(obj) is not dict or obj.get("format") != FORMAT:
        return f'not an esper-lifetimes trace (line 1 must be a header object with "format": "{FORMAT}")'
    version = obj.get("version")
    if type(version) is not int or version < 1:
        return f"invalid trace version {version!r} (expected a positive integer)"
    if version > VERSION:
        known = "1" if VERSION == 1 else f"1 to {VERSION}"
        return f"unsupported trace version {version} (this reader supports version {known})"
    metadata = obj.get("metadata", {})
    if type(metadata) is not dict:
        return f"header 'metadata' must be an object, got {_type_name(metadata)}"
    return None


def _open_text(path: str | os.PathLike, mode: str) -> IO[str]:
    if os.fspath(path).endswith(".gz"):
        return gzip.open(path, mode + "t", encoding="utf-8", newline="\n")
    return open(path, mode, encoding="utf-8", newline="\n")  # noqa: SIM115


def _open_bytes(path: str) -> IO[bytes]:
    # Read as bytes and decoded line by line: a line cut inside a UTF-8 sequence is then
    # a cut line like any other, not an error at the end of the file.
    if path.endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")  # noqa: SIM115


_BOM = b"\xef\xbb\xbf"


def _decode(raw: bytes) -> tuple[Any, str | None]:
    """(object, None) or (None, why the line is not one JSON value)."""
    try:
        text = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 text (byte {exc.start + 1})"
    try:
        return json.loads(text), None
    except RecursionError:
        return None, "malformed JSON: nested too deeply"
    except ValueError as exc:
        detail = getattr(exc, "msg", str(exc))
        col = getattr(exc, "colno", None)
        return None, f"malformed JSON: {detail}" + (f" (column {col})" if col else "")


class Trace:
    """A trace file opened by :func:`read_trace`: its header, and its events when iterated.

    The header is checked when the trace is opened; each event is checked as it is
    read. Iterating again re-reads the file. A last line that is not whole (no line
    end, and not JSON: a writer killed mid-line) ends the events without an error;
    :attr:`cut_at` then holds its line number.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._name = self.path
        try:
            with _open_bytes(self.path) as f:
                first = f.readline()
        except (OSError, EOFError) as exc:
            raise TraceError(f"cannot read trace: {exc}", where=self._name) from exc
        header, _ = _decode(first.removeprefix(_BOM))
        reason = _check_header(header)
        if reason:
            raise TraceError(reason, where=f"{self._name}:1", line=1)
        self.header: dict[str, Any] = header
        self.version: int = header["version"]
        self.metadata: dict[str, Any] = header.get("metadata", {})
        self.events_read = 0
        """Events yielded by the latest iteration."""
        self.cut_at: int | None = None
        """The line number of a cut last line, found by the latest iteration; or None."""

    def __iter__(self) -> Iterator[TraceEvent]:
        name = self._name
        self.events_read = 0
        self.cut_at = None
        lineno = 1
        try:
            with _open_bytes(self.path) as f:
                f.readline()  # the header, checked in __init__
                for lineno, raw in enumerate(f, start=2):
                    if not raw.strip():
                        continue
                    obj, reason = _decode(raw)
                    if reason and not raw.endswith(b"\n"):
                        self.cut_at = lineno
                        return
                    if reason:
                        raise TraceError(reason, where=f"{name}:{lineno}", line=lineno)
                    event, reason = _event_from_json(obj, lineno)
                    if reason:
                        raise TraceError(reason, where=f"{name}:{lineno}", line=lineno)
                    self.events_read += 1
                    yield event
        except EOFError:  # a compressed trace that ends mid-stream: cut as well
            self.cut_at = lineno + 1
        except OSError as exc:
            raise TraceError(f"cannot read trace: {exc}", where=name) from exc

    def __repr__(self) -> str:
        return f"Trace({self.path!r}, version={self.version})"


def read_trace(path: str | os.PathLike) -> Trace:
    """Open a trace file: checks its header now, and yields its events when iterated.

    Raises :class:`TraceError` (a :class:`~esper_lifetimes.LifetimesError`) naming the file
    and line for a missing or foreign header, an unsupported version, malformed JSON, an
    unknown op, or a missing, unknown or mistyped argument.
    """
    return Trace(path)


def _events_of(source: Any) -> tuple[Iterable[TraceEvent], str]:
    """The events of a path, a Trace, or an iterable of TraceEvents / event dicts."""
    if isinstance(source, (str, os.PathLike)):
        trace = Trace(source)
        return trace, trace.path
    if isinstance(source, Trace):
        return source, source.path

    def checked() -> Iterator[TraceEvent]:
        for index, item in enumerate(source, start=1):
            if isinstance(item, TraceEvent):
                yield item
                continue
            yield parse_event(item, index)

    return checked(), ""


def replay_trace(path_or_events: Any, engine: Any = None, *, flush: bool = True) -> Any:
    """Apply a trace's events to ``engine`` (a new :class:`Engine` by default); return it.

    ``path_or_events`` is a trace file path, a :class:`Trace`, or an iterable of
    :class:`TraceEvent` or of event dicts (``{"op": "alloc", "ptr": ..., ...}``). An engine
    error (say, a free of an unknown pointer) is raised as a :class:`TraceError` that names
    the line and keeps the engine's error as ``__cause__``; events before it are applied.
    The end of a trace is the end of its run: ``flush`` (the default) then calls
    ``engine.flush()``, which judges the frees still pending (a trace that ends with a
    ``flush`` event loses nothing by it). A trace whose last line was cut is replayed up
    to its last whole line (``Trace.cut_at`` says where).
    """
    if engine is None:
        engine = Engine()
    events, name = _events_of(path_or_events)
    for event in events:
        try:
            getattr(engine, event.op)(*event.args)
        except LifetimesError as exc:
            if isinstance(exc, TraceError):
                raise
            where = f"{name}:{event.line}" if name else f"event {event.line}"
            raise TraceError(
                f"{event.op}: {type(exc).__name__}: {exc}", where=where, line=event.line
            ) from exc
    if flush:
        engine.flush()
    return engine


class TraceWriter:
    """Writes a trace: the header at once, then one line per call of its engine-like methods.

    ``file`` is a path (``.gz`` compresses) or an open text file. ``metadata`` (a JSON
    object) goes into the header. Each method has the signature of the Engine method of
    the same name, except that a site must be a string or None (not an interned id).
    Arguments are checked, so a writer never produces a trace its reader rejects.
    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self, file: str | os.PathLike | IO[str], *, metadata: dict[str, Any] | None = None
    ):
        if isinstance(file, (str, os.PathLike)):
            self._file: IO[str] = _open_text(file, "w")
            self._owns_file = True
            self.name = os.fspath(file)
        else:
            self._file = file
            self._owns_file = False
            self.name = getattr(file, "name", "<stream>")
        self.events_written = 0
        header: dict[str, Any] = {"format": FORMAT, "version": VERSION, "producer": _producer()}
        if metadata is not None:
            if type(metadata) is not dict:
                raise TraceError(f"metadata must be a dict, got {_type_name(metadata)}")
            header["metadata"] = metadata
        self._file.write(json.dumps(header, separators=(",", ":")) + "\n")

    # -- generic ---------------------------------------------------------------------

    def write(self, op: str, /, *args: Any, **kwargs: Any) -> None:
        """Write one event, its arguments given as for the Engine method ``op``."""
        if op not in OPS:
            raise TraceError(f"unknown op {op!r} (known ops: {', '.join(sorted(OPS))})")
        try:
            values = vocab.bind(op, args, kwargs)
        except TypeError as exc:
            raise TraceError(str(exc)) from None
        self._emit(op, values)

    def write_event(self, event: TraceEvent) -> None:
        """Write an event read from another trace."""
        self._emit(event.op, event.args)

    def _emit(self, op: str, values: Iterable[Any]) -> None:
        if self._file.closed:
            raise TraceError(f"trace {self.name} is closed")
        values, reason = _coerce(op, values)
        if reason:
            raise TraceError(reason)
        obj = vocab.event_dict(op, values)
        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.events_written += 1

    def _op(self, op: str, values: tuple) -> None:
        self._emit(op, values)
        if op == "flush":  # the engine's flush; it also pushes the lines to the file
            self._file.flush()

    # One method per engine call, with the Engine's signature (generated below from the
    # vocabulary). ``flush()`` is the engine's flush event, which also flushes the file.

    # -- file-like -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        """Flush; close the file when the writer opened it."""
        if self._file.closed:
            return
        self._file.flush()
        if self._owns_file:
            self._file.close()

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _producer() -> str:
    try:
        from importlib.metadata import version

        return f"esper-lifetimes {version('esper-lifetimes')}"
    except Exception:  # not installed as a distribution (a source checkout)
        return "esper-lifetimes"


for _spec in vocab.OPS.values():
    setattr(TraceWriter, _spec.name, op_method(_spec, TraceWriter._op, "TraceWriter"))
del _spec


class RecordingEngine(Recorder):
    """An Engine that also writes every call it is given to a trace.

    ``trace`` is a :class:`TraceWriter` or a path (then the recorder owns the writer:
    close it with :meth:`close` or a ``with`` block). ``engine`` defaults to a new
    :class:`Engine`. Each method has the Engine's signature and return value; a call is
    checked first (:func:`esper_lifetimes.vocab.coerce`) and written only after the
    engine accepted it, so a trace holds exactly what the engine saw. Sites given as ids
    from :meth:`intern` are written as their strings. Methods that only read results
    (``hazards``, ``stats``, ``storage_at``, ...) are forwarded. This is the one
    recording proxy, :class:`esper_lifetimes.recording.Recorder`, writing to a trace.
    """

    def __init__(
        self,
        trace: TraceWriter | str | os.PathLike,
        engine: Any = None,
        *,
        metadata: dict[str, Any] | None = None,
    ):
        if isinstance(trace, TraceWriter):
            writer = trace
            self._owns_writer = False
        else:
            writer = TraceWriter(trace, metadata=metadata)
            self._owns_writer = True
        super().__init__(writer._op, engine, strict_sites=True)
        self.writer = writer

    def close(self) -> None:
        """Close the trace writer when this recorder opened it."""
        if self._owns_writer:
            self.writer.close()

    def __enter__(self) -> RecordingEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
