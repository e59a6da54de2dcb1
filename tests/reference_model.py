"""A small, obviously-correct reference model of the engine's semantics.

Written from docs/ENGINE-API.md ("Exact semantics", version 2) and docs/SEMANTICS.md only,
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

from collections import Counter
from dataclasses import dataclass, field

I64_MIN = -(1 << 63)
U64_END = 1 << 64

ERROR = "error"
ADVICE = "advice"

UNSYNCED_FREE = "unsynced-free"
REUSE_RACE = "reuse-race"
UNWAITED_ALLOCATION = "unwaited-allocation"
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
        """The deduplication key of ENGINE-API.md.

        For `unsynced-free` the allocation that triggered the verdict (`other_site`) is
        not part of the key, and the site-less key adds `use_stream` only. "All four
        sites are None" is read as: all the sites *in the key* are None (for
        `unsynced-free`: alloc, use and free site), so that one mistake is one report
        whichever allocation (or flush) revealed it.
        """
        if self.kind == UNSYNCED_FREE:
            sites = (self.alloc_site, self.use_site, self.free_site)
            if all(s is None for s in sites):
                return (self.kind, *sites, self.ptr, self.use_stream)
            return (self.kind, *sites)
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
    # the allocation stream's position at the allocation (0 for `adopt`, and when the
    # stream had no work yet): a use on another stream must be ordered after it
    alloc_position: int = 0
    # stream (other than alloc_stream) -> (latest position, site); insertion order is
    # the order of each stream's first use.
    uses: dict[int, tuple[int, str | None]] = field(default_factory=dict)
    # recorded stream -> site of the record_stream call that added it, in record order.
    recorded: dict[int, str | None] = field(default_factory=dict)
    shadow: list[ByteShadow] = field(default_factory=list)

    def contains(self, ptr: int, nbytes: int = 1) -> bool:
        return self.base <= ptr and ptr + nbytes <= self.base + self.nbytes


@dataclass
class PendingFree:
    """A free with a use on another stream not covered at the free: judged later."""

    storage: Storage
    free_site: str | None
    uncovered: list[int] = field(default_factory=list)  # streams not covered at the free


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
        self.pending: list[PendingFree] = []  # in the order freed
        self.tombstones: list[Tombstone] = []
        self.copies: list[Copy] = []
        self._hazards: list[HazardRecord] = []
        self._by_key: dict[tuple, HazardRecord] = {}
        # redundant-record-stream candidates by dedup key, in the order first found;
        # `count` is the number of times each was found since the last flush
        self._candidates: dict[tuple, HazardRecord] = {}
        # record_stream call sites found needed at least once (None included)
        self._needed_sites: set[str | None] = set()
        # how often each rule's interesting branch ran: not part of the semantics, it
        # lets the property test show (hypothesis statistics) that traces reach them
        self.rules: Counter[str] = Counter()

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

    def _covered(self, alloc_stream: int, u_stream: int, u: int) -> bool:
        """covered(U, u) for a storage allocated on `alloc_stream`, now."""
        if self._host_covers(u_stream, u):
            return True
        return self._stream(alloc_stream).clock.get(u_stream, 0) >= u

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
            found.count += h.count
            if h.live:  # a repeat proven in flight makes the hazard live
                found.live = True
            return
        self._by_key[key] = h
        self._hazards.append(h)

    def _candidate(self, h: HazardRecord) -> None:
        """A redundant-record-stream candidate: advice only if its site is never needed."""
        found = self._candidates.get(h.key())
        if found is not None:
            found.count += 1
            return
        self._candidates[h.key()] = h

    def _containing(self, ptr: int, nbytes: int = 1) -> Storage | None:
        for st in self.storages.values():
            if st.contains(ptr, nbytes):
                return st
        return None

    def _check_new_storage(self, ptr, nbytes, stream, site) -> None:
        _check_ptr(ptr)
        _check_size(ptr, nbytes)
        _check_handle(stream, "stream")
        _check_site(site)
        for st in self.storages.values():
            if _overlaps(ptr, nbytes, st.base, st.nbytes):
                raise ModelUnknownStorage(
                    f"allocation {ptr:#x}+{nbytes} overlaps live storage {st.base:#x}"
                )

    def _judge(self, pf: PendingFree, trigger: tuple[int, int, int, str | None] | None) -> None:
        """The verdict on a free, with the clocks of now. `trigger` is the allocation
        `(stream, ptr, nbytes, site)` that caused it, or None (at once, or flush)."""
        st = pf.storage
        a = st.alloc_stream
        o_stream, o_ptr, o_nbytes, o_site = trigger if trigger is not None else (None,) * 4
        for u_stream in pf.uncovered:
            if self._covered(a, u_stream, st.uses[u_stream][0]):
                self.rules["pending free: use covered after the free, before the verdict"] += 1
        for u_stream, (u, use_site) in st.uses.items():
            if u_stream in st.recorded or self._covered(a, u_stream, u):
                continue
            self._report(
                HazardRecord(
                    kind=UNSYNCED_FREE,
                    severity=ERROR,
                    count=1,
                    ptr=st.base,
                    nbytes=st.nbytes,
                    alloc_stream=a,
                    use_stream=u_stream,
                    other_stream=o_stream,
                    alloc_site=st.alloc_site,
                    use_site=use_site,
                    free_site=pf.free_site,
                    other_site=o_site,
                    other_ptr=o_ptr,
                    other_nbytes=o_nbytes,
                    live=self._live(u_stream, u),
                )
            )
        for r_stream, record_site in st.recorded.items():
            use = st.uses.get(r_stream)
            if use is not None and not self._covered(a, r_stream, use[0]):
                self._needed_sites.add(record_site)
                self.rules["record_stream needed"] += 1
                continue
            self.rules["record_stream redundant at the verdict"] += 1
            self._candidate(
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
                    free_site=pf.free_site,
                )
            )

    # ------------------------------------------------------ storages, accesses

    def alloc(self, ptr, nbytes, stream, site=None):
        self._check_new_storage(ptr, nbytes, stream, site)
        s = self._stream(stream)
        # 1. the verdict on every pending free of a storage allocated on this stream
        due = [pf for pf in self.pending if pf.storage.alloc_stream == stream]
        self.pending = [pf for pf in self.pending if pf.storage.alloc_stream != stream]
        if self.pending:
            self.rules["alloc on another stream leaves a pending free"] += 1
        for pf in due:
            self.rules["pending free judged at an alloc"] += 1
            self._judge(pf, (stream, ptr, nbytes, site))
        # 2. reuse of freed ranges, in address order
        hit = sorted(
            (t for t in self.tombstones if _overlaps(ptr, nbytes, t.base, t.nbytes)),
            key=lambda t: t.base,
        )
        for t in hit:
            if t.alloc_stream != stream and (
                stream in self.virtual or t.alloc_stream in self.virtual
            ):
                self.rules["virtual cross-stream reuse: no verdict"] += 1
                continue  # CUDA's per-stream pools could not hand these bytes out here
            if t.alloc_stream != stream:
                self.rules["cross-stream reuse judged"] += 1
            for u_stream, u, use_site in t.uses:
                if self._host_covers(u_stream, u) or s.clock.get(u_stream, 0) >= u:
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
            ptr,
            nbytes,
            stream,
            site,
            alloc_position=s.position,
            shadow=[ByteShadow() for _ in range(nbytes)],
        )

    def adopt(self, ptr, nbytes, stream, site=None):
        self._check_new_storage(ptr, nbytes, stream, site)
        self._stream(stream)
        # no pending-free verdict, no reuse check: overlapping freed ranges are forgotten
        self.rules["adopt"] += 1
        if any(_overlaps(ptr, nbytes, t.base, t.nbytes) for t in self.tombstones):
            self.rules["adopt over a freed range"] += 1
        self.tombstones = [
            t for t in self.tombstones if not _overlaps(ptr, nbytes, t.base, t.nbytes)
        ]
        self.storages[ptr] = Storage(
            ptr,
            nbytes,
            stream,
            site,
            alloc_position=0,
            shadow=[ByteShadow() for _ in range(nbytes)],
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
        a = st.alloc_stream
        if stream != a:
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
                    alloc_stream=a,
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

        # unwaited-allocation, after this access's own unsynced-access checks
        a0 = st.alloc_position
        if stream == a or a0 == 0:
            return
        if self._ordered(a, a0, stream):
            self.rules["use on another stream ordered after the allocation"] += 1
        elif any(other == a for other, _ in seen):
            self.rules["unwaited-allocation left to unsynced-access"] += 1
        else:
            self._report(
                HazardRecord(
                    kind=UNWAITED_ALLOCATION,
                    severity=ERROR,
                    count=1,
                    ptr=st.base,
                    nbytes=st.nbytes,
                    alloc_stream=a,
                    use_stream=stream,
                    alloc_site=st.alloc_site,
                    use_site=site,
                    live=self._live(a, a0),
                )
            )

    def launch(self, stream, reads, writes, site=None):
        """One kernel launch: `access` for each read range, then each write range; every
        range is checked before any is applied."""
        _check_handle(stream, "stream")
        _check_site(site)
        ranges = []
        for flat, write in ((reads, False), (writes, True)):
            if not isinstance(flat, (tuple, list)):
                raise ModelInvalidArgument(f"ranges must be a tuple or list, got {flat!r}")
            if len(flat) % 2:
                raise ModelInvalidArgument(f"ranges must be (ptr, nbytes) pairs, got {flat!r}")
            for i in range(0, len(flat), 2):
                ptr, nbytes = flat[i], flat[i + 1]
                _check_ptr(ptr)
                _check_size(ptr, nbytes)
                ranges.append((ptr, nbytes, write))
        for ptr, nbytes, _ in ranges:
            if self._containing(ptr, nbytes) is None:
                raise ModelUnknownStorage(f"launch range {ptr:#x}+{nbytes} is in no live storage")
        for ptr, nbytes, write in ranges:
            self.access(ptr, nbytes, stream, write, site)

    def record_stream(self, ptr, stream, site=None):
        _check_ptr(ptr)
        _check_handle(stream, "stream")
        _check_site(site)
        st = self._containing(ptr)
        if st is None:
            raise ModelUnknownStorage(f"record_stream on {ptr:#x}: no live storage there")
        self._stream(stream)
        if stream == st.alloc_stream or stream in st.recorded:
            self._candidate(
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
        self._stream(a)
        del self.storages[ptr]
        # the freed range remembers the uses neither recorded nor covered now
        uncovered = [
            (u_stream, u, use_site)
            for u_stream, (u, use_site) in st.uses.items()
            if u_stream not in st.recorded and not self._covered(a, u_stream, u)
        ]
        if uncovered:
            self.tombstones.append(Tombstone(st.base, st.nbytes, a, st.alloc_site, site, uncovered))
        pf = PendingFree(
            st, site, [u_s for u_s, (u, _) in st.uses.items() if not self._covered(a, u_s, u)]
        )
        if not pf.uncovered:
            self._judge(pf, None)  # judged at once
        else:
            self.rules["free pending"] += 1
            self.pending.append(pf)

    def flush(self):
        due, self.pending = self.pending, []
        for pf in due:
            self.rules["pending free judged at flush"] += 1
            self._judge(pf, None)
        for h in self._candidates.values():
            if h.use_site not in self._needed_sites:
                self._report(h)
            else:
                self.rules["advice withheld: the site was needed once"] += 1
        self._candidates = {}

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

    def forget_event(self, event):
        _check_handle(event, "event")
        self.events.pop(event, None)  # a later wait on the handle: a never-recorded event

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
        p = self._advance(stream)
        # copy against copy on host memory: one of the two writes it (device-to-host)
        for c in self.copies:
            if not _overlaps(host_ptr, nbytes, c.ptr, c.nbytes):
                continue
            if D2H not in (direction, c.direction):
                continue
            if c.stream == stream:
                self.rules["copy against copy on one stream"] += 1
                continue
            if self._ordered(c.stream, c.position, stream):
                self.rules["copy against copy, ordered"] += 1
                continue
            self.rules["copy against copy: race"] += 1
            self._report(
                HazardRecord(
                    kind=UNSYNCED_ACCESS,
                    severity=ERROR,
                    count=1,
                    ptr=host_ptr,
                    nbytes=nbytes,
                    use_stream=stream,
                    other_stream=c.stream,
                    use_site=site,
                    other_site=c.site,
                    live=self._live(c.stream, c.position),
                )
            )
        self.copies.append(Copy(host_ptr, nbytes, stream, p, site, direction))

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
            "pending_frees": len(self.pending),
            "streams": len(self.streams),
            "events": len(self.events),
            "hazards": len(self._hazards),
        }
