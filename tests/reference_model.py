"""A small, obviously-correct reference model of the engine's semantics.

Written from docs/ENGINE-API.md ("Exact semantics") and ../shared/SEMANTICS.md only,
never from the Rust code: the property tests run the same trace through both and
compare verdicts. Clarity over speed: device storages keep per-byte shadow state, so
keep sizes small (tens of bytes).

Method names and argument order are those of `esper_lifetimes.Engine`. Hazards come back
as `HazardRecord`s with the same field names as `esper_lifetimes.Hazard`. Invalid calls
raise `ModelInvalidArgument` or `ModelUnknownStorage` in the situations where the engine
raises `InvalidArgumentError` or `UnknownStorageError`, and leave the state unchanged
(every check happens before the first mutation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

I64_MIN = -(1 << 63)
U64_END = 1 << 64

ERROR = "error"
ADVICE = "advice"

UNSYNCED_FREE = "unsynced-free"
REUSE_RACE = "reuse-race"
UNSYNCED_ACCESS = "unsynced-access"
HOST_READ_BEFORE_COPY = "host-read-before-copy"
HOST_WRITE_DURING_COPY = "host-write-during-copy"
REDUNDANT_RECORD_STREAM = "redundant-record-stream"

D2H = "device-to-host"
H2D = "host-to-device"


class ModelError(Exception):
    """Base of the errors the model raises (mirrors `LifetimesError`)."""


class ModelInvalidArgument(ModelError):
    """Mirrors `InvalidArgumentError`."""


class ModelUnknownStorage(ModelError):
    """Mirrors `UnknownStorageError`."""


@dataclass
class HazardRecord:
    kind: str
    severity: str
    count: int
    ptr: int
    nbytes: int
    alloc_stream: int | None = None
    use_stream: int | None = None
    other_stream: int | None = None
    alloc_site: str | None = None
    use_site: str | None = None
    free_site: str | None = None
    other_site: str | None = None
    other_ptr: int | None = None
    other_nbytes: int | None = None
    live: bool | None = None

    def key(self) -> tuple:
        """The deduplication key of ENGINE-API.md."""
        sites = (self.alloc_site, self.use_site, self.free_site, self.other_site)
        if all(s is None for s in sites):
            return (self.kind, *sites, self.ptr, self.use_stream, self.other_stream)
        return (self.kind, *sites)


@dataclass
class Stream:
    position: int
    clock: dict[int, int]  # the stream's own entry is kept equal to `position`


@dataclass
class Event:
    clock: dict[int, int] | None = None  # None: never recorded
    stream: int | None = None  # the stream it was last recorded on


@dataclass
class ByteShadow:
    write: tuple[int, int, str | None] | None = None  # (stream, position, site)
    reads: dict[int, tuple[int, str | None]] = field(default_factory=dict)  # stream -> (pos, site)


@dataclass
class Storage:
    base: int
    nbytes: int
    alloc_stream: int
    alloc_site: str | None
    # stream (other than alloc_stream) -> (latest position, site); insertion order is
    # the order of each stream's first use.
    uses: dict[int, tuple[int, str | None]] = field(default_factory=dict)
    # recorded stream -> site of the record_stream call that added it, in record order.
    recorded: dict[int, str | None] = field(default_factory=dict)
    shadow: list[ByteShadow] = field(default_factory=list)

    def contains(self, ptr: int, nbytes: int = 1) -> bool:
        return self.base <= ptr and ptr + nbytes <= self.base + self.nbytes


@dataclass
class Tombstone:
    base: int
    nbytes: int
    alloc_stream: int
    alloc_site: str | None
    free_site: str | None
    uses: list[tuple[int, int, str | None]]  # uncovered (stream, position, site)


@dataclass
class Copy:
    ptr: int
    nbytes: int
    stream: int
    position: int
    site: str | None
    direction: str


def _overlaps(a: int, an: int, b: int, bn: int) -> bool:
    return a < b + bn and b < a + an


def _join(into: dict[int, int], other: dict[int, int]) -> None:
    for k, v in other.items():
        if v > into.get(k, 0):
            into[k] = v


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelInvalidArgument(f"{what} must be an int, got {value!r}")
    return value


def _check_handle(value: object, what: str) -> int:
    _check_int(value, what)
    if not I64_MIN <= value < U64_END:
        raise ModelInvalidArgument(f"{what} {value} is out of the 64-bit range")
    return value


def _check_ptr(value: object) -> int:
    _check_int(value, "pointer")
    if not 0 <= value < U64_END:
        raise ModelInvalidArgument(f"pointer {value:#x} is out of range")
    return value


def _check_size(ptr: int, value: object) -> int:
    _check_int(value, "size")
    if value <= 0:
        raise ModelInvalidArgument(f"size {value} must be positive")
    if ptr + value >= U64_END:
        raise ModelInvalidArgument(f"range {ptr:#x}+{value} is out of range")
    return value


def _check_site(site: object) -> str | None:
    if site is None or isinstance(site, str):
        return site
    raise ModelInvalidArgument(f"site must be None or a str, got {site!r}")


class ReferenceModel:
    def __init__(self) -> None:
        self.streams: dict[int, Stream] = {}
        self.events: dict[int, Event] = {}
        self.host: dict[int, int] = {}
        self.virtual: set[int] = set()
        self.names: dict[int, str | None] = {}
        self.windows: dict[int, tuple[int, int]] = {}  # latest False query per stream
        self.storages: dict[int, Storage] = {}  # by base pointer
        self.tombstones: list[Tombstone] = []
        self.copies: list[Copy] = []
        self._hazards: list[HazardRecord] = []
        self._by_key: dict[tuple, HazardRecord] = {}

    # ----------------------------------------------------------------- helpers

    def _stream(self, handle: int) -> Stream:
        """Names a stream: a new one starts from the host's clock."""
        s = self.streams.get(handle)
        if s is None:
            clock = dict(self.host)
            position = clock.get(handle, 0)
            clock[handle] = position
            s = self.streams[handle] = Stream(position, clock)
        return s

    def _event(self, handle: int) -> Event:
        ev = self.events.get(handle)
        if ev is None:
            ev = self.events[handle] = Event()
        return ev

    def _advance(self, handle: int) -> int:
        s = self._stream(handle)
        s.position += 1
        s.clock[handle] = s.position
        return s.position

    def _host_covers(self, u_stream: int, u: int) -> bool:
        return self.host.get(u_stream, 0) >= u

    def _ordered(self, u_stream: int, u: int, s_stream: int) -> bool:
        """Work at position u on u_stream is ordered before new work on s_stream."""
        if u_stream == s_stream:
            return True
        if self._stream(s_stream).clock.get(u_stream, 0) >= u:
            return True
        return self._host_covers(u_stream, u)

    def _live(self, u_stream: int, u: int) -> bool | None:
        if u_stream in self.virtual:
            return True
        window = self.windows.get(u_stream)
        if window is not None and window[0] <= u <= window[1]:
            return True
        return None

    def _report(self, h: HazardRecord) -> None:
        key = h.key()
        found = self._by_key.get(key)
        if found is not None:
            found.count += 1
            if h.live:  # a repeat proven in flight makes the hazard live
                found.live = True
            return
        self._by_key[key] = h
        self._hazards.append(h)

    def _containing(self, ptr: int, nbytes: int = 1) -> Storage | None:
        for st in self.storages.values():
            if st.contains(ptr, nbytes):
                return st
        return None

    # ------------------------------------------------------ storages, accesses

    def alloc(self, ptr, nbytes, stream, site=None):
        _check_ptr(ptr)
        _check_size(ptr, nbytes)
        _check_handle(stream, "stream")
        _check_site(site)
        for st in self.storages.values():
            if _overlaps(ptr, nbytes, st.base, st.nbytes):
                raise ModelUnknownStorage(
                    f"allocation {ptr:#x}+{nbytes} overlaps live storage {st.base:#x}"
                )
        self._stream(stream)
        # several freed ranges under one allocation: reported in address order
        hit = sorted(
            (t for t in self.tombstones if _overlaps(ptr, nbytes, t.base, t.nbytes)),
            key=lambda t: t.base,
        )
        for t in hit:
            for u_stream, u, use_site in t.uses:
                if self._ordered(u_stream, u, stream):
                    continue
                self._report(
                    HazardRecord(
                        kind=REUSE_RACE,
                        severity=ERROR,
                        count=1,
                        ptr=t.base,
                        nbytes=t.nbytes,
                        alloc_stream=t.alloc_stream,
                        use_stream=u_stream,
                        other_stream=stream,
                        alloc_site=t.alloc_site,
                        use_site=use_site,
                        free_site=t.free_site,
                        other_site=site,
                        other_ptr=ptr,
                        other_nbytes=nbytes,
                        live=self._live(u_stream, u),
                    )
                )
        self.tombstones = [t for t in self.tombstones if t not in hit]
        self.storages[ptr] = Storage(
            ptr, nbytes, stream, site, shadow=[ByteShadow() for _ in range(nbytes)]
        )

    def access(self, ptr, nbytes, stream, write=False, site=None):
        _check_ptr(ptr)
        _check_size(ptr, nbytes)
        _check_handle(stream, "stream")
        _check_site(site)
        st = self._containing(ptr, nbytes)
        if st is None:
            raise ModelUnknownStorage(f"access {ptr:#x}+{nbytes} is outside any live storage")
        p = self._advance(stream)
        if stream != st.alloc_stream:
            st.uses[stream] = (p, site)  # an existing key keeps its first-use place
        seen: set[tuple[int, int]] = set()

        def conflict(other_stream: int, other_pos: int, other_site: str | None) -> None:
            if (other_stream, other_pos) in seen:
                return
            seen.add((other_stream, other_pos))
            self._report(
                HazardRecord(
                    kind=UNSYNCED_ACCESS,
                    severity=ERROR,
                    count=1,
                    ptr=st.base,
                    nbytes=st.nbytes,
                    alloc_stream=st.alloc_stream,
                    use_stream=stream,
                    other_stream=other_stream,
                    alloc_site=st.alloc_site,
                    use_site=site,
                    other_site=other_site,
                    live=self._live(other_stream, other_pos),
                )
            )

        lo = ptr - st.base
        for b in st.shadow[lo : lo + nbytes]:
            if b.write is not None:
                w_stream, w, w_site = b.write
                if w_stream != stream and not self._ordered(w_stream, w, stream):
                    conflict(w_stream, w, w_site)
            if write:
                for r_stream, (r, r_site) in b.reads.items():
                    if r_stream != stream and not self._ordered(r_stream, r, stream):
                        conflict(r_stream, r, r_site)
        for b in st.shadow[lo : lo + nbytes]:
            if write:
                b.write = (stream, p, site)
                b.reads = {}
            else:
                b.reads[stream] = (p, site)

    def record_stream(self, ptr, stream, site=None):
        _check_ptr(ptr)
        _check_handle(stream, "stream")
        _check_site(site)
        st = self._containing(ptr)
        if st is None:
            raise ModelUnknownStorage(f"record_stream on {ptr:#x}: no live storage there")
        self._stream(stream)
        if stream == st.alloc_stream or stream in st.recorded:
            self._report(
                HazardRecord(
                    kind=REDUNDANT_RECORD_STREAM,
                    severity=ADVICE,
                    count=1,
                    ptr=st.base,
                    nbytes=st.nbytes,
                    alloc_stream=st.alloc_stream,
                    use_stream=stream,
                    alloc_site=st.alloc_site,
                    use_site=site,
                )
            )
        else:
            st.recorded[stream] = site

    def free(self, ptr, site=None):
        _check_ptr(ptr)
        _check_site(site)
        st = self.storages.get(ptr)
        if st is None:
            raise ModelUnknownStorage(f"free of {ptr:#x}: not the base of a live storage")
        a = st.alloc_stream
        a_clock = self._stream(a).clock

        def covered(u_stream: int, u: int) -> bool:
            return self._host_covers(u_stream, u) or a_clock.get(u_stream, 0) >= u

        uncovered: list[tuple[int, int, str | None]] = []
        for u_stream, (u, use_site) in st.uses.items():
            if u_stream in st.recorded or covered(u_stream, u):
                continue
            uncovered.append((u_stream, u, use_site))
            self._report(
                HazardRecord(
                    kind=UNSYNCED_FREE,
                    severity=ERROR,
                    count=1,
                    ptr=st.base,
                    nbytes=st.nbytes,
                    alloc_stream=a,
                    use_stream=u_stream,
                    alloc_site=st.alloc_site,
                    use_site=use_site,
                    free_site=site,
                    live=self._live(u_stream, u),
                )
            )
        for r_stream, record_site in st.recorded.items():
            use = st.uses.get(r_stream)
            if use is None or covered(r_stream, use[0]):
                self._report(
                    HazardRecord(
                        kind=REDUNDANT_RECORD_STREAM,
                        severity=ADVICE,
                        count=1,
                        ptr=st.base,
                        nbytes=st.nbytes,
                        alloc_stream=a,
                        use_stream=r_stream,
                        alloc_site=st.alloc_site,
                        use_site=record_site,
                        free_site=site,
                    )
                )
        del self.storages[ptr]
        if uncovered:
            self.tombstones.append(Tombstone(st.base, st.nbytes, a, st.alloc_site, site, uncovered))

    # ----------------------------------------------------------------- ordering

    def event_record(self, event, stream):
        _check_handle(event, "event")
        _check_handle(stream, "stream")
        s = self._stream(stream)
        ev = self._event(event)
        ev.clock = dict(s.clock)
        ev.stream = stream

    def event_wait(self, event, stream):
        _check_handle(event, "event")
        _check_handle(stream, "stream")
        s = self._stream(stream)
        ev = self._event(event)
        if ev.clock is not None:
            _join(s.clock, ev.clock)

    def stream_wait(self, waiter, waited):
        _check_handle(waiter, "stream")
        _check_handle(waited, "stream")
        w = self._stream(waiter)
        t = self._stream(waited)
        _join(w.clock, t.clock)

    def stream_synchronize(self, stream):
        _check_handle(stream, "stream")
        _join(self.host, self._stream(stream).clock)

    def event_synchronize(self, event):
        _check_handle(event, "event")
        ev = self._event(event)
        if ev.clock is not None:
            _join(self.host, ev.clock)

    def device_synchronize(self):
        for s in list(self.streams.values()):
            _join(self.host, s.clock)

    def stream_query(self, stream, complete):
        _check_handle(stream, "stream")
        s = self._stream(stream)
        if complete:
            _join(self.host, s.clock)
        else:
            self.windows[stream] = (s.position, s.position)

    def event_query(self, event, complete):
        _check_handle(event, "event")
        ev = self._event(event)
        if ev.clock is None:
            return
        if complete:
            _join(self.host, ev.clock)
        else:
            u = ev.stream
            self.windows[u] = (ev.clock.get(u, 0), self._stream(u).position)

    def define_stream(self, stream, name=None, virtual=False):
        _check_handle(stream, "stream")
        if name is not None and not isinstance(name, str):
            raise ModelInvalidArgument(f"stream name must be None or a str, got {name!r}")
        self._stream(stream)
        self.names[stream] = name
        if virtual:
            self.virtual.add(stream)
        else:
            self.virtual.discard(stream)

    # ------------------------------------------------- host memory and copies

    def _copy(self, host_ptr, nbytes, stream, site, direction):
        _check_ptr(host_ptr)
        _check_size(host_ptr, nbytes)
        _check_handle(stream, "stream")
        _check_site(site)
        u = self._advance(stream)
        self.copies.append(Copy(host_ptr, nbytes, stream, u, site, direction))

    def copy_to_host(self, host_ptr, nbytes, stream, site=None):
        self._copy(host_ptr, nbytes, stream, site, D2H)

    def copy_from_host(self, host_ptr, nbytes, stream, site=None):
        self._copy(host_ptr, nbytes, stream, site, H2D)

    def host_access(self, host_ptr, nbytes, write=False, site=None):
        _check_ptr(host_ptr)
        _check_size(host_ptr, nbytes)
        _check_site(site)
        for c in self.copies:
            if not _overlaps(host_ptr, nbytes, c.ptr, c.nbytes):
                continue
            if self._host_covers(c.stream, c.position):
                continue
            if not write and c.direction == D2H:
                kind = HOST_READ_BEFORE_COPY
            elif write and c.direction == H2D:
                kind = HOST_WRITE_DURING_COPY
            else:
                continue
            self._report(
                HazardRecord(
                    kind=kind,
                    severity=ERROR,
                    count=1,
                    ptr=c.ptr,
                    nbytes=c.nbytes,
                    use_stream=c.stream,
                    use_site=c.site,
                    other_site=site,
                    live=self._live(c.stream, c.position),
                )
            )

    def host_release(self, host_ptr, nbytes):
        _check_ptr(host_ptr)
        _check_size(host_ptr, nbytes)
        self.copies = [c for c in self.copies if not _overlaps(host_ptr, nbytes, c.ptr, c.nbytes)]

    # ------------------------------------------------------------------ results

    def hazards(self, since=0) -> list[HazardRecord]:
        return [HazardRecord(**vars(h)) for h in self._hazards[since:]]

    def hazard_count(self) -> int:
        return len(self._hazards)

    def error_count(self) -> int:
        return sum(1 for h in self._hazards if h.severity == ERROR)

    def storage_at(self, ptr):
        st = self._containing(ptr)
        return None if st is None else (st.base, st.nbytes, st.alloc_stream)

    def counts(self) -> dict[str, int]:
        """The `Engine.stats()` entries whose value the docs fix exactly."""
        return {
            "live_storages": len(self.storages),
            "streams": len(self.streams),
            "events": len(self.events),
            "hazards": len(self._hazards),
        }
