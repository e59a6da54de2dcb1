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
]

FORMAT = "esper-lifetimes-trace"
"""The value of the header's ``format`` key."""

VERSION = 1
"""The trace format version this module writes, and the highest it reads."""

_I64_MIN = vocab.I64_MIN
_U64_MAX = vocab.U64_MAX

# Argument kinds.
_INT = vocab.INT  # a pointer, size or handle: an int in the signed or unsigned 64-bit range
_BOOL = vocab.BOOL
_SITE = vocab.SITE  # None or a source-site string
_NAME = vocab.NAME  # None or a string
_RANGES = vocab.RANGES  # a list of ints, (ptr, nbytes) pairs flattened

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
        obj: dict[str, Any] = {"op": self.op}
        for (name, _kind, default), value in zip(OPS[self.op], self.args, strict=True):
            if default is _REQUIRED or value is not default:
                obj[name] = value
        return obj

    def apply(self, engine: Any) -> Any:
        """Call the engine method this event stands for."""
        return getattr(engine, self.op)(*self.args)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_arg(op: str, name: str, kind: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``name`` argument of ``op``, or None when it is."""
    if kind == _INT:
        if type(value) is not int:
            return f"{op}: argument '{name}' must be an integer, got {_type_name(value)} {value!r}"
        if not _I64_MIN <= value <= _U64_MAX:
            return f"{op}: argument '{name}' = {value} is outside the 64-bit range"
    elif kind == _RANGES:
        if type(value) not in (list, tuple) or len(value) % 2:
            return (
                f"{op}: argument '{name}' must be a list of (ptr, nbytes) pairs flattened, "
                f"got {_type_name(value)} {value!r}"
            )
        for v in value:
            if type(v) is not int or not _I64_MIN <= v <= _U64_MAX:
                return f"{op}: argument '{name}' holds {v!r}, not a 64-bit integer"
    elif kind == _BOOL:
        if type(value) is not bool:
            return (
                f"{op}: argument '{name}' must be true or false, got {_type_name(value)} {value!r}"
            )
    elif value is not None and type(value) is not str:  # _SITE, _NAME
        return (
            f"{op}: argument '{name}' must be a string or null, got {_type_name(value)} {value!r}"
        )
    return None


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
    for name, kind, default in specs:
        if name in obj:
            value = obj[name]
            present += 1
        elif default is _REQUIRED:
            return None, f"{op}: missing argument '{name}'"
        else:
            value = default
        reason = _check_arg(op, name, kind, value)
        if reason:
            return None, reason
        args.append(value)
    if len(obj) > present:
        known = [spec[0] for spec in specs]
        extra = sorted(k for k in obj if k != "op" and k not in known)
        allowed = ", ".join(known) if known else "none"
        return None, f"{op}: unknown argument(s) {', '.join(map(repr, extra))} (allowed: {allowed})"
    return TraceEvent(op, tuple(args), line), None


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


class Trace:
    """A trace file opened by :func:`read_trace`: its header, and its events when iterated.

    The header is checked when the trace is opened; each event is checked as it is
    read. Iterating again re-reads the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._name = self.path
        try:
            with _open_text(self.path, "r") as f:
                first = f.readline()
        except (OSError, UnicodeDecodeError, EOFError) as exc:
            raise TraceError(f"cannot read trace: {exc}", where=self._name) from exc
        try:
            header = json.loads(first)
        except ValueError:
            header = None
        reason = _check_header(header)
        if reason:
            raise TraceError(reason, where=f"{self._name}:1", line=1)
        self.header: dict[str, Any] = header
        self.version: int = header["version"]
        self.metadata: dict[str, Any] = header.get("metadata", {})
        self.events_read = 0
        """Events yielded by the latest iteration."""

    def __iter__(self) -> Iterator[TraceEvent]:
        name = self._name
        self.events_read = 0
        try:
            with _open_text(self.path, "r") as f:
                f.readline()  # the header, checked in __init__
                for lineno, text in enumerate(f, start=2):
                    if not text.strip():
                        continue
                    try:
                        obj = json.loads(text.rstrip("\r\n"))
                    except ValueError as exc:
                        detail = getattr(exc, "msg", str(exc))
                        col = getattr(exc, "colno", None)
                        where = f" (column {col})" if col else ""
                        raise TraceError(
                            f"malformed JSON: {detail}{where}",
                            where=f"{name}:{lineno}",
                            line=lineno,
                        ) from None
                    event, reason = _event_from_json(obj, lineno)
                    if reason:
                        raise TraceError(reason, where=f"{name}:{lineno}", line=lineno)
                    self.events_read += 1
                    yield event
        except (OSError, UnicodeDecodeError, EOFError) as exc:
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
            event, reason = _event_from_json(item, index)
            if reason:
                raise TraceError(reason, where=f"event {index}", line=index)
            yield event

    return checked(), ""


def replay_trace(path_or_events: Any, engine: Any = None) -> Any:
    """Apply a trace's events to ``engine`` (a new :class:`Engine` by default); return it.

    ``path_or_events`` is a trace file path, a :class:`Trace`, or an iterable of
    :class:`TraceEvent` or of event dicts (``{"op": "alloc", "ptr": ..., ...}``). An engine
    error (say, a free of an unknown pointer) is raised as a :class:`TraceError` that names
    the line and keeps the engine's error as ``__cause__``; events before it are applied.
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
        specs = OPS.get(op)
        if specs is None:
            raise TraceError(f"unknown op {op!r} (known ops: {', '.join(sorted(OPS))})")
        if len(args) > len(specs):
            raise TraceError(f"{op}: takes at most {len(specs)} arguments, got {len(args)}")
        values = list(args)
        for name, _kind, default in specs[len(args) :]:
            if name in kwargs:
                values.append(kwargs.pop(name))
            elif default is _REQUIRED:
                raise TraceError(f"{op}: missing argument '{name}'")
            else:
                values.append(default)
        if kwargs:
            raise TraceError(f"{op}: unexpected argument(s) {', '.join(map(repr, kwargs))}")
        self._emit(op, values)

    def write_event(self, event: TraceEvent) -> None:
        """Write an event read from another trace."""
        self._emit(event.op, event.args)

    def _emit(self, op: str, values: Iterable[Any]) -> None:
        if self._file.closed:
            raise TraceError(f"trace {self.name} is closed")
        obj: dict[str, Any] = {"op": op}
        for (name, kind, default), value in zip(OPS[op], values, strict=True):
            reason = _check_arg(op, name, kind, value)
            if reason:
                raise TraceError(reason)
            if default is _REQUIRED or value is not default:
                obj[name] = value
        self._file.write(json.dumps(obj, separators=(",", ":")) + "\n")
        self.events_written += 1

    # -- one method per engine call (same signatures as Engine) ----------------------

    def define_stream(self, stream: int, name: str | None = None, virtual: bool = False) -> None:
        self._emit("define_stream", (stream, name, virtual))

    def alloc(self, ptr: int, nbytes: int, stream: int, site: str | None = None) -> None:
        self._emit("alloc", (ptr, nbytes, stream, site))

    def access(
        self, ptr: int, nbytes: int, stream: int, write: bool = False, site: str | None = None
    ) -> None:
        self._emit("access", (ptr, nbytes, stream, write, site))

    def launch(
        self, stream: int, reads: Iterable[int], writes: Iterable[int], site: str | None = None
    ) -> None:
        self._emit("launch", (stream, list(reads), list(writes), site))

    def record_stream(self, ptr: int, stream: int, site: str | None = None) -> None:
        self._emit("record_stream", (ptr, stream, site))

    def free(self, ptr: int, site: str | None = None) -> None:
        self._emit("free", (ptr, site))

    def event_record(self, event: int, stream: int) -> None:
        self._emit("event_record", (event, stream))

    def event_wait(self, event: int, stream: int) -> None:
        self._emit("event_wait", (event, stream))

    def stream_wait(self, waiter: int, waited: int) -> None:
        self._emit("stream_wait", (waiter, waited))

    def stream_synchronize(self, stream: int) -> None:
        self._emit("stream_synchronize", (stream,))

    def event_synchronize(self, event: int) -> None:
        self._emit("event_synchronize", (event,))

    def device_synchronize(self) -> None:
        self._emit("device_synchronize", ())

    def stream_query(self, stream: int, complete: bool) -> None:
        self._emit("stream_query", (stream, complete))

    def event_query(self, event: int, complete: bool) -> None:
        self._emit("event_query", (event, complete))

    def forget_event(self, event: int) -> None:
        self._emit("forget_event", (event,))

    def copy_to_host(
        self, host_ptr: int, nbytes: int, stream: int, site: str | None = None
    ) -> None:
        self._emit("copy_to_host", (host_ptr, nbytes, stream, site))

    def copy_from_host(
        self, host_ptr: int, nbytes: int, stream: int, site: str | None = None
    ) -> None:
        self._emit("copy_from_host", (host_ptr, nbytes, stream, site))

    def host_access(
        self, host_ptr: int, nbytes: int, write: bool = False, site: str | None = None
    ) -> None:
        self._emit("host_access", (host_ptr, nbytes, write, site))

    def host_release(self, host_ptr: int, nbytes: int) -> None:
        self._emit("host_release", (host_ptr, nbytes))

    # -- file-like -------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._file.closed

    def flush(self) -> None:
        self._file.flush()

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


class RecordingEngine:
    """An Engine that also writes every call it is given to a trace.

    ``trace`` is a :class:`TraceWriter` or a path (then the recorder owns the writer:
    close it with :meth:`close` or a ``with`` block). ``engine`` defaults to a new
    :class:`Engine`. Each method has the Engine's signature and return value; a call is
    written only after the engine accepted it, so a trace holds exactly what the engine
    saw. Sites given as ids from :meth:`intern` are written as their strings. Methods that
    only read results (``hazards``, ``stats``, ``storage_at``, ...) are forwarded.
    """

    def __init__(
        self,
        trace: TraceWriter | str | os.PathLike,
        engine: Any = None,
        *,
        metadata: dict[str, Any] | None = None,
    ):
        if isinstance(trace, TraceWriter):
            self.writer = trace
            self._owns_writer = False
        else:
            self.writer = TraceWriter(trace, metadata=metadata)
            self._owns_writer = True
        self.engine = Engine() if engine is None else engine
        self._site_names: dict[int, str] = {}

    def intern(self, site: str) -> int:
        """As ``Engine.intern``; remembers the id so that calls using it record the string."""
        site_id = self.engine.intern(site)
        self._site_names[site_id] = site
        return site_id

    def _site(self, site: Any) -> str | None:
        if site is None or type(site) is str:
            return site
        if type(site) is int:
            name = self._site_names.get(site)
            if name is not None:
                return name
            raise TraceError(
                f"site id {site} was not interned through this RecordingEngine "
                "(call its intern() so the trace can hold the site's string)"
            )
        return site  # let the engine reject it with its own error

    def define_stream(self, stream: int, name: str | None = None, virtual: bool = False) -> Any:
        result = self.engine.define_stream(stream, name, virtual)
        self.writer.define_stream(stream, name, virtual)
        return result

    def alloc(self, ptr: int, nbytes: int, stream: int, site: Any = None) -> Any:
        text = self._site(site)
        result = self.engine.alloc(ptr, nbytes, stream, site)
        self.writer.alloc(ptr, nbytes, stream, text)
        return result

    def access(
        self, ptr: int, nbytes: int, stream: int, write: bool = False, site: Any = None
    ) -> Any:
        text = self._site(site)
        result = self.engine.access(ptr, nbytes, stream, write, site)
        self.writer.access(ptr, nbytes, stream, bool(write), text)
        return result

    def launch(self, stream: int, reads: Any, writes: Any, site: Any = None) -> Any:
        text = self._site(site)
        result = self.engine.launch(stream, reads, writes, site)
        self.writer.launch(stream, list(reads), list(writes), text)
        return result

    def record_stream(self, ptr: int, stream: int, site: Any = None) -> Any:
        text = self._site(site)
        result = self.engine.record_stream(ptr, stream, site)
        self.writer.record_stream(ptr, stream, text)
        return result

    def free(self, ptr: int, site: Any = None) -> Any:
        text = self._site(site)
        result = self.engine.free(ptr, site)
        self.writer.free(ptr, text)
        return result

    def event_record(self, event: int, stream: int) -> Any:
        result = self.engine.event_record(event, stream)
        self.writer.event_record(event, stream)
        return result

    def event_wait(self, event: int, stream: int) -> Any:
        result = self.engine.event_wait(event, stream)
        self.writer.event_wait(event, stream)
        return result

    def stream_wait(self, waiter: int, waited: int) -> Any:
        result = self.engine.stream_wait(waiter, waited)
        self.writer.stream_wait(waiter, waited)
        return result

    def stream_synchronize(self, stream: int) -> Any:
        result = self.engine.stream_synchronize(stream)
        self.writer.stream_synchronize(stream)
        return result

    def event_synchronize(self, event: int) -> Any:
        result = self.engine.event_synchronize(event)
        self.writer.event_synchronize(event)
        return result

    def device_synchronize(self) -> Any:
        result = self.engine.device_synchronize()
        self.writer.device_synchronize()
        return result

    def stream_query(self, stream: int, complete: bool) -> Any:
        result = self.engine.stream_query(stream, complete)
        self.writer.stream_query(stream, bool(complete))
        return result

    def event_query(self, event: int, complete: bool) -> Any:
        result = self.engine.event_query(event, complete)
        self.writer.event_query(event, bool(complete))
        return result

    def forget_event(self, event: int) -> Any:
        result = self.engine.forget_event(event)
        self.writer.forget_event(event)
        return result

    def copy_to_host(self, host_ptr: int, nbytes: int, stream: int, site: Any = None) -> Any:
        text = self._site(site)
        result = self.engine.copy_to_host(host_ptr, nbytes, stream, site)
        self.writer.copy_to_host(host_ptr, nbytes, stream, text)
        return result

    def copy_from_host(self, host_ptr: int, nbytes: int, stream: int, site: Any = None) -> Any:
        text = self._site(site)
        result = self.engine.copy_from_host(host_ptr, nbytes, stream, site)
        self.writer.copy_from_host(host_ptr, nbytes, stream, text)
        return result

    def host_access(self, host_ptr: int, nbytes: int, write: bool = False, site: Any = None) -> Any:
        text = self._site(site)
        result = self.engine.host_access(host_ptr, nbytes, write, site)
        self.writer.host_access(host_ptr, nbytes, bool(write), text)
        return result

    def host_release(self, host_ptr: int, nbytes: int) -> Any:
        result = self.engine.host_release(host_ptr, nbytes)
        self.writer.host_release(host_ptr, nbytes)
        return result

    def replay(self, array: Any) -> int:
        """As ``Engine.replay``; writes each applied row as its named event.

        On a bad row the engine applies the rows before it: those are written, then the
        engine's error is raised.
        """
        before = self.engine.stats()["events_processed"]
        try:
            applied = self.engine.replay(array)
        except LifetimesError:
            applied = self.engine.stats()["events_processed"] - before
            self._write_rows(array, applied)
            raise
        self._write_rows(array, applied)
        return applied

    def _write_rows(self, array: Any, count: int) -> None:
        rows = array[:count].tolist() if hasattr(array, "tolist") else list(array)[:count]
        for code, a, b, c in rows:
            op, to_args = BULK_OPS[code]
            self.writer._emit(op, to_args(a, b, c))

    def __getattr__(self, name: str) -> Any:
        # Read-only queries (hazards, hazard_count, error_count, storage_at, stats, ...).
        return getattr(self.engine, name)

    def close(self) -> None:
        """Close the trace writer when this recorder opened it."""
        if self._owns_writer:
            self.writer.close()

    def __enter__(self) -> RecordingEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
