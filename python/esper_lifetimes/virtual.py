"""Virtual streams: ``torch.cuda``'s stream API on the CPU.

Inside :func:`esper_lifetimes.track` (or a ``@checked`` call), CPU tensors stand for
device memory on the virtual stream that is current on the thread, and go through the
same tracking code as CUDA tensors. The model is the worst case of the real thing: work
enqueued on a virtual stream stays in flight until the host synchronizes it, so an
uncovered free or access on one is reported as *live*.

>>> from esper_lifetimes import virtual
>>> s = virtual.Stream(name="env3")
>>> s
virtual.Stream(name='env3')
>>> with virtual.stream(s):
...     assert virtual.current_stream() is s

Outside tracking these are cheap objects: the current stream is kept, every other method
does nothing (``query()`` then answers ``True``).

``query()`` semantics. A stream (or event) with work the host has not synchronized
answers ``False`` once; asked again with no new work in between, it answers ``True``
(the host polled until the work completed) and that answer is an ordering edge, like
``synchronize()``. So a single check sees the work in flight, and a loop that spins on
``query()`` ends.

Host memory. On the CPU, nothing tells host memory from memory that stands for device
memory; :func:`pin_memory` returns a copy marked as pinned host memory, and
:func:`to_host` / :func:`to_device` are the non-blocking copies of the real API (on CUDA
tensors they are ``tensor.to("cpu" | "cuda", non_blocking=...)``). A tracker checks host
reads and writes of marked memory against the copies in flight over it, exactly as for
pinned memory on CUDA.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import torch

from esper_lifetimes import patches

__all__ = [
    "Stream",
    "Event",
    "StreamContext",
    "stream",
    "current_stream",
    "default_stream",
    "set_stream",
    "synchronize",
    "pin_memory",
    "to_host",
    "to_device",
    "is_host",
    "DEFAULT_HANDLE",
]

DEFAULT_HANDLE = 1 << 61
"""The engine handle of the default virtual stream; other streams count up from it."""

_handles = itertools.count(DEFAULT_HANDLE + 1)
_event_handles = itertools.count((1 << 61) | (1 << 48))
_lock = threading.Lock()
streams: weakref.WeakValueDictionary[int, Stream] = weakref.WeakValueDictionary()

# Bumped by every device synchronize: an event recorded before it is complete.
_epoch = 0

_POLLED = 2  # Stream._pending: False (idle), True (new work), _POLLED (seen by query())


def _trackers() -> list[Any]:
    """Trackers to feed: those active on this thread, unless inside a patched call."""
    st = patches.thread_state
    if st.depth:
        return []
    return st.active


def _feed(method: str, *args: Any) -> None:
    st = patches.thread_state
    fast = st.fast
    if fast is not None:
        # The always-on tracker alone on this thread: one call, no fan-out, no depth
        # bookkeeping (its methods guard themselves, and its barriers, which run more
        # than the engine, count the depth themselves); its safe points are its barriers
        # (patches._ThreadState.fast).
        if not st.depth:
            getattr(fast, method)(*args)
        return
    if st.depth or not st.active:
        return
    trackers = st.active
    st.depth += 1
    try:
        for tr in patches.targets(trackers):
            getattr(tr, method)(*args)
    finally:
        st.depth -= 1
    for tr in tuple(trackers):
        tr.safe_point()


class Stream:
    """A virtual stream. ``Stream(name="env3")``; ``priority`` and ``device`` are accepted
    and ignored, as the virtual device has one queue per stream and no priorities."""

    __slots__ = ("handle", "name", "priority", "_pending", "__weakref__")

    def __init__(self, device: Any = None, priority: int = 0, *, name: str | None = None):
        with _lock:
            handle = next(_handles)
        self.handle = handle
        self.name = name if name is not None else f"vstream{handle - DEFAULT_HANDLE}"
        self.priority = priority
        self._pending: bool | int = False
        with _lock:
            streams[handle] = self
        for tr in patches.live_trackers():
            tr.define_virtual_stream(self)

    # The API of torch.cuda.Stream --------------------------------------------------

    def wait_stream(self, stream: Stream) -> None:
        """Orders this stream's future work after all work enqueued on ``stream``."""
        _check_stream(stream)
        if stream._pending and stream is not self:
            self._pending = True
        _feed("on_stream_wait", self.handle, stream.handle)

    def wait_event(self, event: Event) -> None:
        """Orders this stream's future work after ``event``'s recorded work."""
        _check_event(event)
        if event._in_flight():
            self._pending = True
        _feed("on_event_wait", event.handle, self.handle)

    def record_event(self, event: Event | None = None) -> Event:
        """Records ``event`` (a new one when ``None``) on this stream and returns it."""
        if event is None:
            event = Event()
        event.record(self)
        return event

    def synchronize(self) -> None:
        """The host waits for every piece of work enqueued on this stream."""
        self._pending = False
        _feed("on_stream_sync", self.handle)

    def query(self) -> bool:
        """``False`` once while unsynchronized work is in flight, then ``True``."""
        p = self._pending
        if p is True:
            self._pending = _POLLED
            done = False
        else:
            self._pending = False
            done = True
        _feed("on_stream_query", self.handle, done)
        return done

    # Conveniences ----------------------------------------------------------------------

    def __enter__(self) -> Stream:
        ctx = StreamContext(self)
        ctx.__enter__()
        ctx_stack().append(ctx)
        return self

    def __exit__(self, *exc: Any) -> None:
        ctx_stack().pop().__exit__(*exc)

    def __repr__(self) -> str:
        return f"virtual.Stream(name={self.name!r})"


def _check_stream(s: Any) -> None:
    if not isinstance(s, Stream):
        raise TypeError(f"expected an esper_lifetimes.virtual.Stream, got {type(s).__name__}")


def _check_event(e: Any) -> None:
    if not isinstance(e, Event):
        raise TypeError(f"expected an esper_lifetimes.virtual.Event, got {type(e).__name__}")


DEFAULT = Stream.__new__(Stream)
DEFAULT.handle = DEFAULT_HANDLE
DEFAULT.name = "default"
DEFAULT.priority = 0
DEFAULT._pending = False
streams[DEFAULT_HANDLE] = DEFAULT


class Event:
    """A virtual event: ``record``, ``wait``, ``synchronize``, ``query`` as in torch.cuda."""

    __slots__ = (
        "handle",
        "enable_timing",
        "blocking",
        "interprocess",
        "_recorded",
        "_pending",
        "_epoch",
        "__weakref__",
    )

    def __init__(
        self, enable_timing: bool = False, blocking: bool = False, interprocess: bool = False
    ):
        with _lock:
            self.handle = next(_event_handles)
        self.enable_timing = enable_timing
        self.blocking = blocking
        self.interprocess = interprocess
        self._recorded = False
        self._pending: bool | int = False
        self._epoch = 0

    def _in_flight(self) -> bool:
        return bool(self._pending) and self._epoch == _epoch

    def record(self, stream: Stream | None = None) -> None:
        """Captures ``stream``'s work so far (the current stream when ``None``)."""
        s = current_stream() if stream is None else stream
        _check_stream(s)
        self._recorded = True
        self._pending = bool(s._pending)
        self._epoch = _epoch
        _feed("on_event_record", self.handle, s.handle)

    def wait(self, stream: Stream | None = None) -> None:
        """Makes ``stream`` (the current stream when ``None``) wait for this event."""
        s = current_stream() if stream is None else stream
        _check_stream(s)
        s.wait_event(self)

    def synchronize(self) -> None:
        """The host waits for the recorded work."""
        self._pending = False
        _feed("on_event_sync", self.handle)

    def query(self) -> bool:
        """``False`` once while the recorded work is in flight, then ``True``."""
        if self._in_flight() and self._pending is True:
            self._pending = _POLLED
            done = False
        else:
            self._pending = False
            done = True
        _feed("on_event_query", self.handle, done)
        return done

    def elapsed_time(self, end_event: Event) -> float:
        """Virtual work takes no time."""
        return 0.0

    def __repr__(self) -> str:
        return f"virtual.Event(handle={self.handle:#x})"

    def __del__(self) -> None:
        # The engine forgets the event: its handle is never named again.
        try:
            if self._recorded:
                for tr in patches.live_trackers():
                    tr.forget_event(self.handle)
        except Exception:  # noqa: S110 - a finalizer never raises
            pass


# ---------------------------------------------------------------------------------------
# Current stream (per thread)


class ThreadStream:
    """One thread's current virtual stream (``stream``; ``None``: the default stream).

    A plain object, one per thread, so that code bound to a thread (the tracker's
    dispatch mode, pushed on one thread) reads the current stream with one attribute
    load: a read through the ``threading.local`` costs about 450 instructions more, once
    per tracked op (``bench_instructions.py --loop mlp``). Not slotted: the always-on
    tracker's compiled hooks read its ``__dict__`` (a dict lookup is cheaper from Rust
    than an attribute read)."""

    def __init__(self) -> None:
        self.stream: Stream | None = None


class _State(threading.local):
    def __init__(self) -> None:
        self.ctx: list[StreamContext] = []
        self.cur = ThreadStream()  # this thread's current stream


state = _State()


def thread_stream() -> ThreadStream:
    """The calling thread's current-stream cell (read it on this thread's behalf only)."""
    return state.cur


def ctx_stack() -> list[StreamContext]:
    return state.ctx


def current_stream(device: Any = None) -> Stream:
    """The virtual stream current on this thread (the default stream if none is set)."""
    s = state.cur.stream
    return DEFAULT if s is None else s


def default_stream(device: Any = None) -> Stream:
    """The default virtual stream (one for the process, as CUDA's per device)."""
    return DEFAULT


def set_stream(s: Stream | None) -> None:
    """Makes ``s`` current on this thread (``None``: the default stream)."""
    if s is not None:
        _check_stream(s)
    state.cur.stream = None if s is DEFAULT else s


class StreamContext:
    """``with virtual.stream(s):`` makes ``s`` current and restores the previous one."""

    __slots__ = ("stream", "_prev")

    def __init__(self, s: Stream | None):
        if s is not None:
            _check_stream(s)
        self.stream = s
        self._prev: Stream | None = None

    def __enter__(self) -> Stream | None:
        cur = state.cur
        self._prev = cur.stream
        if self.stream is not None:
            cur.stream = None if self.stream is DEFAULT else self.stream
        return self.stream

    def __exit__(self, *exc: Any) -> None:
        state.cur.stream = self._prev


def stream(s: Stream | None) -> StreamContext:
    """Context manager selecting ``s`` as the current virtual stream (``None``: no-op)."""
    return StreamContext(s)


def synchronize(device: Any = None) -> None:
    """The host waits for every virtual stream."""
    global _epoch
    with _lock:
        _epoch += 1
        live = list(streams.values())
    for s in live:
        s._pending = False
    _feed("on_device_sync")


def all_streams() -> Iterator[Stream]:
    """Every virtual stream still alive (and the default one)."""
    with _lock:
        return iter(list(streams.values()))


# ---------------------------------------------------------------------------------------
# Host memory

# id(untyped storage) -> weakref to it, for storages marked as pinned host memory.
host_storages: dict[int, weakref.ref[Any]] = {}


def _forget_host(key: int) -> Any:
    def cb(_ref: Any) -> None:
        host_storages.pop(key, None)

    return cb


def mark_host(t: torch.Tensor) -> torch.Tensor:
    st = t.untyped_storage()
    key = id(st)
    host_storages[key] = weakref.ref(st, _forget_host(key))
    return t


def is_host(t: torch.Tensor) -> bool:
    """Whether ``t`` lives in memory marked as (pinned) host memory."""
    if t.is_cuda:
        return False
    return id(t.untyped_storage()) in host_storages


def _is_host_storage_key(key: int) -> bool:
    return key in host_storages


def _no_modes() -> Any:
    from torch.utils._python_dispatch import _disable_current_modes

    return _disable_current_modes()


def pin_memory(t: torch.Tensor) -> torch.Tensor:
    """A copy of CPU tensor ``t`` in memory marked as pinned host memory."""
    if t.is_cuda:
        raise RuntimeError("pin_memory() takes a CPU tensor")
    for tr in tuple(_trackers()):
        tr.on_host_read(t, False)
    with _no_modes():
        out = t.detach().clone(memory_format=torch.contiguous_format)
    return mark_host(out)


def to_host(t: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """Device to host: ``t.to("cpu", non_blocking=...)`` on the virtual device.

    The result is marked pinned host memory; with ``non_blocking=True`` the host must not
    read it before the copy is known complete (an event after it, or a synchronize).
    """
    if t.is_cuda:
        return t.to("cpu", non_blocking=non_blocking)
    with _no_modes():
        out = torch.empty_like(t, memory_format=torch.contiguous_format)
    mark_host(out)
    out.copy_(t, non_blocking=non_blocking)
    return out


def to_device(t: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """Host to device: ``t.to("cuda", non_blocking=...)`` on the virtual device.

    The result is a CPU tensor standing for device memory, allocated on the current
    virtual stream. From pinned (marked) memory with ``non_blocking=True`` the copy reads
    ``t`` while the host goes on: writing ``t`` before the copy is known complete
    corrupts it.
    """
    if t.is_cuda:
        raise RuntimeError("to_device() takes a CPU tensor")
    out = torch.empty_like(t, memory_format=torch.contiguous_format)
    out.copy_(t, non_blocking=non_blocking)
    return out


# ``tensor.record_stream(virtual_stream)`` outside tracking (the program run untracked,
# ``ESPER_LIFETIMES=off``, a test with the plugin off): a no-op, as a virtual stream has no
# allocator behind it, rather than torch's "unknown parameter type". One isinstance check
# per record_stream call, a rare op; tracking's own patch sits on top of this one.
_torch_record_stream = torch.Tensor.record_stream


def _record_stream(self: torch.Tensor, stream: Any) -> None:
    if isinstance(stream, Stream):
        return None
    return _torch_record_stream(self, stream)


_record_stream.__doc__ = _torch_record_stream.__doc__
_record_stream.__wrapped__ = _torch_record_stream  # type: ignore[attr-defined]
if not hasattr(torch.Tensor.record_stream, "__wrapped__"):
    _record_stream_patch = patches.PatchSet().apply(
        [(torch.Tensor, "record_stream", _record_stream)]
    )
