"""Type stubs of the compiled engine (rust/bindings.rs). See docs/ENGINE-API.md.

Checked against the compiled module by ``python -m mypy.stubtest esper_lifetimes._core``
(``make lint``).
"""

from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, TypedDict, final, type_check_only

__all__ = [
    "KINDS",
    "AlwaysOnHooks",
    "Engine",
    "Hazard",
    "LifetimesError",
    "InvalidArgumentError",
    "UnknownStorageError",
    "_hazard_from_dict",
    "item_method",
    "set_item_hooks",
]

_Site: TypeAlias = str | int | None
"""A source site: ``"path:line"``, an id from :meth:`Engine.intern`, or None."""

_KindName: TypeAlias = Literal[
    "unsynced-free",
    "reuse-race",
    "unwaited-allocation",
    "unsynced-access",
    "host-read-before-copy",
    "host-write-during-copy",
    "redundant-record-stream",
]
_Severity: TypeAlias = Literal["error", "advice"]
_SiteField: TypeAlias = Literal["alloc_site", "use_site", "free_site", "other_site"]
_StreamNameField: TypeAlias = Literal["alloc_stream_name", "use_stream_name", "other_stream_name"]

@type_check_only
class KindInfo(TypedDict):
    """One entry of :data:`KINDS`."""

    name: _KindName
    severity: _Severity
    title: str
    hint: str
    roles: tuple[tuple[str, _SiteField, _StreamNameField | None], ...]

@type_check_only
class Stats(TypedDict):
    """What :meth:`Engine.stats` returns."""

    live_storages: int
    pending_frees: int
    freed_tracked: int
    freed_dropped: int
    pending_host_copies: int
    streams: int
    events: int
    sites: int
    hazards: int
    events_processed: int

@type_check_only
class HazardDict(TypedDict):
    """What :meth:`Hazard.to_dict` returns (keys in this order)."""

    kind: _KindName
    severity: _Severity
    count: int
    ptr: int
    nbytes: int
    alloc_stream: int | None
    use_stream: int | None
    other_stream: int | None
    alloc_stream_name: str | None
    use_stream_name: str | None
    other_stream_name: str | None
    alloc_site: str | None
    use_site: str | None
    free_site: str | None
    other_site: str | None
    other_ptr: int | None
    other_nbytes: int | None
    live: bool | None
    message: str

KINDS: tuple[KindInfo, ...]
"""Every hazard kind, from the Rust ``Kind`` enum, in report order (errors first)."""

def _hazard_from_dict(d: dict[str, Any]) -> Hazard:
    """Rebuilds a :class:`Hazard` from :meth:`Hazard.to_dict` (pickling)."""

class LifetimesError(Exception):
    """Base class of the engine's errors (and of every esper-lifetimes error)."""

class InvalidArgumentError(LifetimesError):
    """A call with an argument the engine refuses; the engine is left unchanged."""

class UnknownStorageError(LifetimesError):
    """A call about a pointer inside no live storage; the engine is left unchanged."""

@final
class Hazard:
    """One distinct hazard (deduplicated by kind and sites), with its occurrence count."""

    @property
    def kind(self) -> _KindName: ...
    @property
    def severity(self) -> _Severity: ...
    @property
    def count(self) -> int: ...
    @property
    def ptr(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def alloc_stream(self) -> int | None: ...
    @property
    def use_stream(self) -> int | None: ...
    @property
    def other_stream(self) -> int | None: ...
    @property
    def alloc_stream_name(self) -> str | None: ...
    @property
    def use_stream_name(self) -> str | None: ...
    @property
    def other_stream_name(self) -> str | None: ...
    @property
    def alloc_site(self) -> str | None: ...
    @property
    def use_site(self) -> str | None: ...
    @property
    def free_site(self) -> str | None: ...
    @property
    def other_site(self) -> str | None: ...
    @property
    def other_ptr(self) -> int | None: ...
    @property
    def other_nbytes(self) -> int | None: ...
    @property
    def live(self) -> bool | None: ...
    @property
    def message(self) -> str: ...
    def to_dict(self) -> HazardDict: ...

@final
class Engine:
    """The happens-before engine: feed it the program's stream events, read its hazards."""

    def __init__(self) -> None: ...
    def alloc(self, ptr: int, nbytes: int, stream: int, site: _Site = None) -> None: ...
    def alloc_write(self, ptr: int, nbytes: int, stream: int, site: _Site = None) -> None:
        """``alloc`` then ``access(ptr, nbytes, stream, True, site)``, in one call."""
    def adopt(self, ptr: int, nbytes: int, stream: int, site: _Site = None) -> None:
        """A storage whose allocation was not seen (it existed before tracking)."""
    def access(
        self, ptr: int, nbytes: int, stream: int, write: bool | None = None, site: _Site = None
    ) -> None: ...
    def launch(
        self, stream: int, reads: Sequence[int], writes: Sequence[int], site: _Site = None
    ) -> None: ...
    def _noop_launch(
        self, stream: int, reads: Sequence[int], writes: Sequence[int], site: _Site = None
    ) -> None: ...
    def record_stream(self, ptr: int, stream: int, site: _Site = None) -> None: ...
    def free(self, ptr: int, site: _Site = None) -> None: ...
    def flush(self) -> None:
        """The end of a region, test or run: judges every pending free now."""
    def event_record(self, event: int, stream: int) -> None: ...
    def event_wait(self, event: int, stream: int) -> None: ...
    def stream_wait(self, waiter: int, waited: int) -> None: ...
    def stream_synchronize(self, stream: int) -> None: ...
    def event_synchronize(self, event: int) -> None: ...
    def device_synchronize(self) -> None: ...
    def stream_query(self, stream: int, complete: bool) -> None: ...
    def event_query(self, event: int, complete: bool) -> None: ...
    def forget_event(self, event: int) -> None: ...
    def define_stream(self, stream: int, name: str | None = None, virtual: bool = ...) -> None: ...
    def copy_to_host(self, host_ptr: int, nbytes: int, stream: int, site: _Site = None) -> None: ...
    def copy_from_host(
        self, host_ptr: int, nbytes: int, stream: int, site: _Site = None
    ) -> None: ...
    def host_access(
        self, host_ptr: int, nbytes: int, write: bool | None = None, site: _Site = None
    ) -> None: ...
    def host_release(self, host_ptr: int, nbytes: int) -> None: ...
    def intern(self, site: str) -> int: ...
    def storage_at(self, ptr: int) -> tuple[int, int, int] | None: ...
    def hazards(self, since: int | None = None) -> list[Hazard]: ...
    def hazard_count(self) -> int: ...
    def error_count(self) -> int: ...
    def set_error_signal(self, signal: list[None]) -> None:
        """A later call that records an error leaves one ``None`` in ``signal``."""
    def stats(self) -> Stats: ...
    def replay(self, array: Any) -> int:
        """The bulk path: an (N, 4) int64 array of rows ``[code, a, b, c]``
        (:mod:`esper_lifetimes.ops`); returns the rows applied."""
    def _noop(
        self, ptr: int, nbytes: int, stream: int, write: bool | None = None, site: _Site = None
    ) -> None: ...
    def _lookup(
        self, ptr: int, nbytes: int, stream: int, write: bool | None = None, site: _Site = None
    ) -> bool:
        """``_noop`` plus finding the live storage containing ``ptr``; True if found."""

@final
class AlwaysOnHooks:
    """The always-on tracker's hooks in compiled code (rust/hooks.rs): the engine update
    of each hooked call and a barrier's common case; the rest goes back to the tracker."""

    def __new__(
        cls,
        engine: Any,
        tracker: Any,
        thread: int,
        tstate: dict[str, Any],
        vcur: dict[str, Any],
        vdefault: Any,
        host_marks: dict[int, Any],
        named: set[int],
        recs: dict[int, Any],
        *,
        cpu_device: bool,
        full: bool,
        adopt_unseen: bool,
    ) -> AlwaysOnHooks: ...
    active: bool
    emulating: bool
    quick: bool
    boundary: int
    next_open: int
    logged: int
    @property
    def barriers(self) -> int: ...
    def barrier(self) -> None: ...
    def thread_fast(self, fast: Any) -> None: ...
    def on_stream_wait(self, waiter: int, waited: int) -> None: ...
    def on_event_record(self, event: int, stream: int) -> None: ...
    def on_event_wait(self, event: int, stream: int) -> None: ...
    def on_stream_query(self, stream: int, complete: bool) -> None: ...
    def on_event_query(self, event: int, complete: bool) -> None: ...
    def on_stream_sync(self, stream: int) -> None: ...
    def on_event_sync(self, event: int) -> None: ...
    def on_device_sync(self) -> None: ...
    def skips_record(self, t: Any) -> bool: ...

def item_method(base: type, orig: Any) -> Any:
    """The compiled ``Tensor.item``: a method descriptor of ``base`` (``TensorBase``) that
    calls ``orig`` (torch's ``item``), then the hooks of ``set_item_hooks``. Made once per
    process for one ``orig``."""

def set_item_hooks(hooks: AlwaysOnHooks | None) -> None:
    """The hooks the compiled ``Tensor.item`` reports to; None for none."""
