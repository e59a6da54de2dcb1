"""Patching and restoring the torch APIs that a dispatch mode does not see.

Stream and event calls, ``Tensor.record_stream``, blocking host reads that dispatch no
aten op (``tolist``, ``numpy``, printing, ``cpu`` of a CPU tensor) and
``UntypedStorage.resize_`` are replaced, while at least one tracker is active on any
thread, by wrappers that call the original and then feed every tracker active on the
*calling* thread. The patches are reference-counted: the first activation installs them,
the last deactivation restores the originals exactly (an attribute that the class only
inherited is deleted again, not shadowed).

This module also holds the per-thread stack of active trackers and the set of live
trackers (those started and not yet closed, on any thread).

A wrapper called from inside another wrapper (``Stream.wait_stream`` is implemented by
torch with ``record_event`` and ``wait_event``) feeds nothing: only the outermost call is
an event for the trackers.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

__all__ = [
    "Watcher",
    "PatchSet",
    "replace_original",
    "active",
    "push",
    "pop",
    "live_trackers",
    "add_live",
    "install",
    "uninstall",
    "installed",
    "cuda_stream_handle",
    "cuda_event_handle",
]


# ---------------------------------------------------------------------------------------
# What a tracker shows the patches


class Watcher(Protocol):
    """The interface the patches and virtual streams feed (``Tracker`` implements it, in
    ``esper_lifetimes/tracking/hooks.py`` and ``region.py``). None of its methods raises
    into the program but :meth:`safe_point`, where a ``raise`` policy raises."""

    yield_to_inner: bool  # suspended while another tracker is active above it

    def safe_point(self, exc: BaseException | None = None, final: bool = False) -> None: ...
    def define_virtual_stream(self, s: Any) -> None: ...
    def forget_event(self, h: int) -> None: ...
    def on_stream_wait(self, waiter: int, waited: int) -> None: ...
    def on_event_record(self, event: int, stream: int) -> None: ...
    def on_event_wait(self, event: int, stream: int) -> None: ...
    def on_stream_sync(self, stream: int) -> None: ...
    def on_event_sync(self, event: int) -> None: ...
    def on_device_sync(self) -> None: ...
    def on_stream_query(self, stream: int, complete: bool) -> None: ...
    def on_event_query(self, event: int, complete: bool) -> None: ...
    def on_record_stream(self, t: torch.Tensor, stream: int) -> None: ...
    def on_host_read(self, t: torch.Tensor, device_sync: bool = True) -> None: ...
    def on_storage_resized(self, st: Any) -> None: ...


# ---------------------------------------------------------------------------------------
# Per-thread state


class _ThreadState(threading.local):
    def __init__(self) -> None:
        self.active: list[Watcher] = []  # trackers active on this thread, innermost last
        self.modes: list[Any] = []  # their dispatch modes, same order
        self.depth = 0  # > 0 while inside a patched call
        # The run's always-on tracker when it is the only tracker active on this thread
        # (else None): the hooks then take its fast path (modes.py, "hot paths"), with no
        # thread-id check (the slot is per thread) and no generic fan-out.
        self.fast: Any = None


thread_state = _ThreadState()

# The compiled hooks (_core.AlwaysOnHooks) of the always-on trackers running, and the
# latest one's (else None): the patched record_stream asks it first whether there is
# anything to record. Each is told when its thread's `fast` slot changes (_set_fast).
hook_sets: list[Any] = []
fast_hooks: Any = None


def add_hooks(hooks: Any) -> None:
    global fast_hooks
    hook_sets.append(hooks)
    fast_hooks = hooks


def discard_hooks(hooks: Any) -> None:
    global fast_hooks
    if hooks in hook_sets:
        hook_sets.remove(hooks)
    fast_hooks = hook_sets[-1] if hook_sets else None


def active() -> list[Watcher]:
    """The trackers active on the calling thread (do not mutate)."""
    return thread_state.active


def push(tracker: Watcher, mode: Any) -> None:
    """Makes ``tracker`` the innermost on this thread. Every active tracker is fed the
    thread's events, except one that *yields to inner regions* (``yield_to_inner``: the
    pytest plugin's per-test region, the always-on tracker) while another sits above it:
    a test's own ``track()`` region then owns its events, and its deliberate hazards do
    not also fail the test."""
    for t, m in zip(thread_state.active, thread_state.modes, strict=True):
        if m is not None and t.yield_to_inner:
            m.suspended += 1
    thread_state.active.append(tracker)
    thread_state.modes.append(mode)
    from esper_lifetimes import autocast  # loaded by the patch table already

    autocast.note_outer()  # a region that starts inside autocast
    _set_fast()


def _set_fast() -> None:
    act = thread_state.active
    fast = act[0] if len(act) == 1 and getattr(act[0], "_fast_hooks", False) else None
    thread_state.fast = fast
    for h in hook_sets:
        h.thread_fast(fast)  # its own thread's slot: whether its tracker is alone there


def pop(tracker: Watcher) -> Any:
    """Removes ``tracker`` (the innermost occurrence) and returns its mode."""
    act = thread_state.active
    for i in range(len(act) - 1, -1, -1):
        if act[i] is tracker:
            del act[i]
            mode = thread_state.modes.pop(i)
            for t, m in zip(act[:i], thread_state.modes[:i], strict=True):
                if m is not None and t.yield_to_inner:
                    m.suspended -= 1
            _set_fast()
            return mode
    return None


def set_mode(tracker: Watcher, mode: Any) -> None:
    """Replaces the dispatch mode recorded for ``tracker`` on this thread (the always-on
    tracker opens and closes windows), suspended if it yields to trackers above it."""
    act = thread_state.active
    for i in range(len(act) - 1, -1, -1):
        if act[i] is tracker:
            if mode is not None and tracker.yield_to_inner:
                mode.suspended = len(act) - 1 - i
            thread_state.modes[i] = mode
            return


def targets(active: list[Watcher]) -> list[Watcher]:
    """The trackers an event on this thread feeds (see :func:`push`)."""
    if len(active) < 2:
        return active
    top = active[-1]
    return [t for t in active if t is top or not t.yield_to_inner]


_live: weakref.WeakSet[Watcher] = weakref.WeakSet()
_live_lock = threading.RLock()  # reentrant: finalizers (Event.__del__) take it


def add_live(tracker: Watcher) -> None:
    with _live_lock:
        _live.add(tracker)


def discard_live(tracker: Watcher) -> None:
    with _live_lock:
        _live.discard(tracker)


def live_trackers() -> list[Watcher]:
    with _live_lock:
        return list(_live)


# ---------------------------------------------------------------------------------------
# Handles for CUDA streams and events

CUDA_STREAM_TAG = 1 << 62
_MASK48 = (1 << 48) - 1
_event_ids = iter(range(1 << 40, 1 << 41))
_event_lock = threading.Lock()


def cuda_stream_handle(stream_id: int, device_index: int) -> int:
    """The engine handle of a CUDA stream: stable for (device, stream_id)."""
    return CUDA_STREAM_TAG | ((device_index & 0xFF) << 48) | (stream_id & _MASK48)


def _stream_handle(stream: Any) -> int:
    return cuda_stream_handle(stream.stream_id, stream.device_index)


def cuda_event_handle(event: Any) -> int:
    h = getattr(event, "_esper_handle", None)
    if h is None:
        with _event_lock:
            h = next(_event_ids)
        try:
            event._esper_handle = h
        except AttributeError:  # pragma: no cover - an Event without __dict__
            h = id(event)
    return h


def _current_cuda_stream() -> Any:
    return torch.cuda.current_stream()


# ---------------------------------------------------------------------------------------
# The wrappers


# Trackers read a tensor's real device: under esper_lifetimes.emulate, a torch function
# mode would answer "cuda" for an emulated CUDA tensor (a CPU tensor).
_real_devices = torch._C.DisableTorchFunction


def _feed(trackers: Sequence[Watcher], method: str, *args: Any) -> None:
    with _real_devices():
        for tr in tuple(trackers):
            getattr(tr, method)(*args)


def _safe_points(trackers: Sequence[Watcher]) -> None:
    if _pending_base is not None:
        raise_pending()
    for tr in tuple(trackers):
        tr.safe_point()


def _wrap(orig: Callable[..., Any], feed: Callable[..., None]) -> Callable[..., Any]:
    """``orig`` followed, for the outermost patched call on a tracked thread, by ``feed``.

    ``feed(trackers, result, *args, **kwargs)`` tells the trackers; afterwards every
    tracker gets a safe point (where a ``raise`` policy may raise).
    """

    def patched(*args: Any, **kwargs: Any) -> Any:
        st = thread_state
        if not st.active or st.depth:
            if _stale and not _install_count:
                heal()  # left behind under another patch, come back since: the original
            return orig(*args, **kwargs)
        st.depth += 1
        try:
            result = orig(*args, **kwargs)
        finally:
            st.depth -= 1
        fast = st.fast  # the always-on tracker alone: its safe points are its barriers
        trackers = targets(st.active) if fast is None else (fast,)
        st.depth += 1
        try:
            feed(trackers, result, *args, **kwargs)
        finally:
            st.depth -= 1
        _safe_points(trackers if fast is None else ())
        return result

    patched.__name__ = getattr(orig, "__name__", "patched")
    patched.__qualname__ = getattr(orig, "__qualname__", "patched")
    patched.__doc__ = getattr(orig, "__doc__", None)
    patched.__wrapped__ = orig  # type: ignore[attr-defined]
    return patched


# Tensor.record_stream: a virtual stream is handled without calling torch (which would
# reject it); a CUDA stream calls torch, then feeds.
def _make_record_stream(orig: Callable[..., Any]) -> Callable[..., Any]:
    from esper_lifetimes import virtual

    vstream = virtual.Stream

    def record_stream(self: torch.Tensor, stream: Any) -> None:
        h = fast_hooks
        if h is not None and h.skips_record(self):
            # The always-on tracker alone on this thread: a storage it does not track
            # (allocated outside a window) has nothing to record. Returns at once.
            if not isinstance(stream, vstream):
                orig(self, stream)
            return None
        st = thread_state
        if isinstance(stream, vstream):
            if st.active and not st.depth:
                st.depth += 1
                try:
                    _feed(targets(st.active), "on_record_stream", self, stream.handle)
                finally:
                    st.depth -= 1
                _safe_points(st.active)
            return None
        if not st.active or st.depth:
            return orig(self, stream)
        st.depth += 1
        try:
            orig(self, stream)
            _feed(targets(st.active), "on_record_stream", self, _stream_handle(stream))
        finally:
            st.depth -= 1
        _safe_points(st.active)
        return None

    record_stream.__wrapped__ = orig  # type: ignore[attr-defined]
    record_stream.__doc__ = orig.__doc__
    return record_stream


def _f_stream_wait(trs: Sequence[Watcher], _r: Any, self: Any, stream: Any) -> None:
    _feed(trs, "on_stream_wait", _stream_handle(self), _stream_handle(stream))


def _f_stream_wait_event(trs: Sequence[Watcher], _r: Any, self: Any, event: Any) -> None:
    _feed(trs, "on_event_wait", cuda_event_handle(event), _stream_handle(self))


def _f_stream_record_event(
    trs: Sequence[Watcher], result: Any, self: Any, event: Any = None
) -> None:
    ev = result if result is not None else event
    if ev is not None:
        _feed(trs, "on_event_record", cuda_event_handle(ev), _stream_handle(self))


def _f_stream_sync(trs: Sequence[Watcher], _r: Any, self: Any) -> None:
    _feed(trs, "on_stream_sync", _stream_handle(self))


def _f_stream_query(trs: Sequence[Watcher], result: Any, self: Any) -> None:
    _feed(trs, "on_stream_query", _stream_handle(self), bool(result))


def _f_event_record(trs: Sequence[Watcher], _r: Any, self: Any, stream: Any = None) -> None:
    s = stream if stream is not None else _current_cuda_stream()
    _feed(trs, "on_event_record", cuda_event_handle(self), _stream_handle(s))


def _f_event_wait(trs: Sequence[Watcher], _r: Any, self: Any, stream: Any = None) -> None:
    s = stream if stream is not None else _current_cuda_stream()
    _feed(trs, "on_event_wait", cuda_event_handle(self), _stream_handle(s))


def _f_event_sync(trs: Sequence[Watcher], _r: Any, self: Any) -> None:
    _feed(trs, "on_event_sync", cuda_event_handle(self))


def _f_event_query(trs: Sequence[Watcher], result: Any, self: Any) -> None:
    _feed(trs, "on_event_query", cuda_event_handle(self), bool(result))


def _f_device_sync(trs: Sequence[Watcher], _r: Any, *_a: Any, **_k: Any) -> None:
    _feed(trs, "on_device_sync")


def _f_host_read(trs: Sequence[Watcher], _r: Any, self: Any, *_a: Any, **_k: Any) -> None:
    if isinstance(self, torch.Tensor):
        _feed(trs, "on_host_read", self)


def _f_resize(trs: Sequence[Watcher], _r: Any, self: Any, *_a: Any, **_k: Any) -> None:
    _feed(trs, "on_storage_resized", self)


_CUDA_STREAM = torch.cuda.streams.Stream
_CUDA_EVENT = torch.cuda.streams.Event


# (owner, attribute name, factory of the patched function from the original)
def _patch_table() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    # the real classes, also while esper_lifetimes.emulate has replaced torch.cuda.Stream
    cs = _CUDA_STREAM
    ce = _CUDA_EVENT
    t = torch.Tensor
    table: list[tuple[Any, str, Callable[[Any], Any]]] = [
        (t, "record_stream", _make_record_stream),
        (cs, "wait_stream", lambda o: _wrap(o, _f_stream_wait)),
        (cs, "wait_event", lambda o: _wrap(o, _f_stream_wait_event)),
        (cs, "record_event", lambda o: _wrap(o, _f_stream_record_event)),
        (cs, "synchronize", lambda o: _wrap(o, _f_stream_sync)),
        (cs, "query", lambda o: _wrap(o, _f_stream_query)),
        (ce, "record", lambda o: _wrap(o, _f_event_record)),
        (ce, "wait", lambda o: _wrap(o, _f_event_wait)),
        (ce, "synchronize", lambda o: _wrap(o, _f_event_sync)),
        (ce, "query", lambda o: _wrap(o, _f_event_query)),
        (torch.cuda, "synchronize", lambda o: _wrap(o, _f_device_sync)),
        (t, "tolist", lambda o: _wrap(o, _f_host_read)),
        (t, "numpy", lambda o: _wrap(o, _f_host_read)),
        (t, "cpu", lambda o: _wrap(o, _f_host_read)),
        (t, "__repr__", lambda o: _wrap(o, _f_host_read)),
        (torch.UntypedStorage, "resize_", lambda o: _wrap(o, _f_resize)),
    ]
    # autocast entered or left while tracking: its dispatch key state, for autocast.run
    from esper_lifetimes import autocast

    ac = torch.amp.autocast_mode.autocast
    table.append((ac, "__enter__", autocast.make_enter))
    table.append((ac, "__exit__", autocast.make_exit))
    # torch.distributed's collectives, works and futures (esper_lifetimes.distributed)
    from esper_lifetimes import distributed

    table += distributed.patch_table()
    return table


MISSING: Any = object()  # "not in the owner's __dict__" (an inherited attribute)
_install_lock = threading.RLock()  # reentrant: a wrapper may heal while installing
_install_count = 0
# (owner, name, value in owner.__dict__ before or MISSING, the wrapper installed)
_saved: list[tuple[Any, str, Any, Any]] = []
# Wrappers of ours that another patch covered when they were to be restored (another
# library patched the attribute during a region, a test's monkeypatch): the other patch
# stays; if our wrapper comes back later (the monkeypatch is undone), heal() restores the
# original then. Same entries as _saved.
_stale: list[tuple[Any, str, Any, Any]] = []


def installed() -> bool:
    return _install_count > 0


# The rows and wrappers of the last install, reused by the next one: a @checked call
# outside a region installs and restores the whole table every call, and building it
# (some wrappers read their original's signature) was most of that call's cost.
# _table_rows is valid while _table_key() is unchanged; a wrapper is reused while the
# attribute holds the very original it wraps ((id(owner), name) -> (original, wrapper)).
_table_rows: list[tuple[Any, str, Callable[[Any], Any]]] = []
_table_made: tuple[Any, ...] | None = None
_wrappers: dict[tuple[int, str], tuple[Any, Any]] = {}


def _table_key() -> tuple[Any, ...]:
    """What the patch table's rows depend on besides constants: which of
    ``torch.distributed``'s re-exports are still the collectives themselves."""
    from esper_lifetimes import distributed

    return distributed.table_key()


def _rows() -> list[tuple[Any, str, Callable[[Any], Any]]]:
    global _table_made
    key = _table_key()
    if _table_made != key or not _table_rows:
        _table_rows[:] = _patch_table()
        _table_made = key
    return _table_rows


def _wrapper(owner: Any, name: str, orig: Any, make: Callable[[Any], Any]) -> Any:
    """A new wrapper of ``orig``, remembered for the next install."""
    ours = make(orig)
    ours.__esper_patch__ = True
    _wrappers[(id(owner), name)] = (orig, ours)
    return ours


def install() -> None:
    """Installs the patches (reference-counted)."""
    global _install_count
    install_signal_guard()
    with _install_lock:
        if _install_count == 0:
            _heal_locked()
            done: list[tuple[Any, str, Any, Any]] = []
            try:
                wrappers = _wrappers
                for owner, name, make in _rows():
                    own = owner.__dict__.get(name, MISSING)
                    orig = getattr(owner, name)
                    made = wrappers.get((id(owner), name))
                    ours = made[1] if made is not None and made[0] is orig else None
                    if ours is None:
                        ours = _wrapper(owner, name, orig, make)
                    setattr(owner, name, ours)
                    done.append((owner, name, own, ours))
            except BaseException:
                _restore(done)
                raise
            _saved[:] = done
        _install_count += 1


def _put_back(owner: Any, name: str, own: Any) -> None:
    if own is MISSING:
        try:
            delattr(owner, name)
        except AttributeError:  # pragma: no cover
            pass
    else:
        setattr(owner, name, own)


def _restore(saved: list[tuple[Any, str, Any, Any]]) -> None:
    """Restores exactly what :func:`install` replaced: an attribute that still holds our
    wrapper gets its original back; one that another patch replaced meanwhile keeps that
    patch (remembered in ``_stale``, in case our wrapper comes back under it)."""
    for entry in reversed(saved):
        owner, name, own, ours = entry
        if owner.__dict__.get(name, MISSING) is ours:
            _put_back(owner, name, own)
        else:
            _stale.append(entry)
    del _stale[:-64]  # bounded: the most recent covered wrappers


def _heal_locked() -> None:
    keep = []
    for entry in _stale:
        owner, name, own, ours = entry
        cur = owner.__dict__.get(name, MISSING)
        if cur is ours:
            _put_back(owner, name, own)  # our wrapper came back: the original now
        elif cur is not own:
            keep.append(entry)  # still covered by another patch
    _stale[:] = keep


def heal() -> None:
    """Outside every region: where a wrapper of ours came back after it was restored (a
    ``monkeypatch`` undone after the region that it covered), the original again."""
    if not _stale:
        return
    with _install_lock:
        if _install_count == 0:
            _heal_locked()


def uninstall() -> None:
    """Undoes one :func:`install`; the last one restores every original."""
    global _install_count
    with _install_lock:
        if _install_count <= 0:
            return
        _install_count -= 1
        if _install_count == 0:
            _restore(_saved)
            _saved.clear()
            _heal_locked()


class PatchSet:
    """Attributes of torch (or of ``threading``) replaced together and restored exactly:
    the one way this package patches anything besides the table above. CUDA emulation,
    a region's thread and ``torch.compile`` followers and the always-on ``.item()`` hook
    each hold one.

    :meth:`apply` sets each ``(owner, name, value)`` and remembers what the owner's own
    ``__dict__`` held; :meth:`restore` puts that back where the attribute still holds
    ``value``. Where another patch covers it meanwhile, that patch stays, and whoever
    installed it (the patch table above or another set) restores the original instead of
    ``value`` when its turn comes (:func:`replace_original`).
    """

    __slots__ = ("entries", "__weakref__")

    def __init__(self) -> None:
        # (owner, name, what owner.__dict__ held before or MISSING, the value installed)
        self.entries: list[tuple[Any, str, Any, Any]] = []

    def apply(self, specs: Sequence[tuple[Any, str, Any]]) -> PatchSet:
        """Installs every ``(owner, name, value)``; on a failure, undoes those done."""
        try:
            for owner, name, value in specs:
                d = getattr(owner, "__dict__", None)
                before = d.get(name, MISSING) if d is not None else MISSING
                setattr(owner, name, value)
                self.entries.append((owner, name, before, value))
        except BaseException:
            self.restore()
            raise
        with _install_lock:
            _sets.add(self)
        return self

    def restore(self) -> None:
        """Undoes :meth:`apply` (a second call does nothing)."""
        entries, self.entries = self.entries, []
        with _install_lock:
            _sets.discard(self)
        for owner, name, before, value in reversed(entries):
            d = getattr(owner, "__dict__", None)
            cur = d.get(name, MISSING) if d is not None else MISSING
            if cur is value:
                _put_back(owner, name, before)
            else:
                replace_original(owner, name, value, before)


_sets: weakref.WeakSet[PatchSet] = weakref.WeakSet()


def replace_original(owner: Any, name: str, installed: Any, before: Any) -> None:
    """A patch ``installed`` of ``owner.name`` is undone while another patch covers it:
    what the covering patch restores later is ``before`` (:data:`MISSING`: no attribute
    of the owner's own), not ``installed``."""
    with _install_lock:
        for saved in (_saved, _stale):
            for i, (o, n, own, ours) in enumerate(saved):
                if o is owner and n == name and own is installed:
                    saved[i] = (o, n, before, ours)
        for ps in list(_sets):
            es = ps.entries
            for i, (o, n, own, value) in enumerate(es):
                if o is owner and n == name and own is installed:
                    es[i] = (o, n, before, value)


def dynamo_stance() -> Any:
    """Dynamo's current stance object (None when dynamo is not loaded)."""
    ef = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(ef, "_stance", None) if ef is not None else None


def restore_dynamo_stance(stance: Any, only_if: Any = MISSING) -> None:
    """Puts back a stance saved by :func:`dynamo_stance` (``torch.compiler.set_stance``
    takes names, not the saved object); with ``only_if``, only while that one is set."""
    ef = sys.modules.get("torch._dynamo.eval_frame")
    if ef is None or stance is None:
        return
    if only_if is MISSING or ef._stance is only_if:
        ef._stance = stance


def never_compiled(code: Any) -> bool:
    """Tells dynamo to run ``code`` (a dispatch handler) as it is, and everything it
    calls, whenever it runs while dynamo's frame hook is active (inside a compiled
    function that runs ops eagerly): never compiled, never traced. Set in torch's C
    extension, so it costs nothing per call and does not import ``torch._dynamo``.

    Without it, dynamo compiles the handler into a call of the op alone, and ops run
    from compiled code pass the tracker unseen (the report says nothing). False where
    this torch has no such setting: the handler then keeps its own per-op check."""
    try:
        ef = torch._C._dynamo.eval_frame
        skip = ef._FrameAction.SKIP
        ef.set_code_exec_strategy(code, ef._FrameExecStrategy(skip, skip))
    except (AttributeError, TypeError, RuntimeError):
        return False
    return True


def signal_pending() -> bool:
    """Whether a signal's exception, caught in a callback of ours, waits to be raised
    (:func:`raise_pending`)."""
    return _pending_base is not None


def originals() -> dict[str, Any]:
    """What each patched attribute is when no tracker is active (for tests)."""
    out: dict[str, Any] = {}
    for owner, name, _make in _patch_table():
        key = f"{getattr(owner, '__qualname__', getattr(owner, '__name__', owner))}.{name}"
        out[key] = owner.__dict__.get(name, MISSING)
    return out


# ---------------------------------------------------------------------------------------
# Signals that land in the tracker's own callbacks
#
# A signal handler runs in the main thread between two bytecodes, wherever they are: also
# inside a weakref callback of the tracker (a storage's free). Python swallows what such a
# callback raises (it prints "Exception ignored in ..."), so a Ctrl-C landing there would
# be lost. Whatever is not an ``Exception`` is handed back to the program instead:
#
# * a ``KeyboardInterrupt`` by simulating the SIGINT again (``_thread.interrupt_main``:
#   the program's own handler runs again). Not from inside the callback, where the
#   handler would run at once and be swallowed again, but from a helper thread woken
#   through a C-level queue: by the time it runs, the main thread is (very likely) out of
#   the callback; if it is not, the callback catches it again and hands it on again.
# * anything else (a handler's ``SystemExit``) is raised at the next safe point
#   (:func:`raise_pending`: a patched call, a tracker's safe point, a region's exit).
#
# Also a ``KeyboardInterrupt`` that lands in one of these callbacks before it could catch
# it, or in the weakref callbacks of the standard library's weak containers, reaches
# ``sys.unraisablehook``: a hook chained in front of it hands those back the same way.

_pending_base: BaseException | None = None
_redeliver_q: Any = None
_redeliver_lock = threading.Lock()


def _redeliverer(q: Any) -> None:  # pragma: no cover - runs in its own thread
    import _thread
    import signal

    while True:
        q.get()
        _thread.interrupt_main(signal.SIGINT)


def _start_redeliverer() -> Any:
    global _redeliver_q
    with _redeliver_lock:
        if _redeliver_q is None:
            import queue

            q: Any = queue.SimpleQueue()
            t = threading.Thread(
                target=_redeliverer, args=(q,), name="esper-lifetimes-signals", daemon=True
            )
            t.start()
            _redeliver_q = q
    return _redeliver_q


def redeliver(exc: BaseException) -> None:
    """Hands ``exc``, caught inside one of the tracker's callbacks, back to the program."""
    global _pending_base
    if isinstance(exc, KeyboardInterrupt):
        q = _redeliver_q
        if q is None:
            q = _start_redeliverer()
        q.put(None)
    else:
        _pending_base = exc


def raise_pending() -> None:
    """Raises what :func:`redeliver` kept for the next safe point (the main thread only)."""
    global _pending_base
    exc = _pending_base
    if exc is not None and threading.current_thread() is threading.main_thread():
        _pending_base = None
        raise exc


_FOREIGN_CALLBACK_MODULES = ("_weakrefset", "weakref")


def _ours(obj: Any) -> bool:
    fn = getattr(obj, "__func__", obj)
    mod = str(getattr(fn, "__module__", "") or "")
    return mod.startswith("esper_lifetimes") or mod in _FOREIGN_CALLBACK_MODULES


_prev_unraisablehook: Any = None


def _unraisablehook(u: Any) -> None:
    exc = getattr(u, "exc_value", None)
    if exc is not None and not isinstance(exc, Exception) and _ours(getattr(u, "object", None)):
        redeliver(exc)  # landed in a callback before it could catch it
        return
    prev = _prev_unraisablehook
    (prev if prev is not None else sys.__unraisablehook__)(u)


def install_signal_guard() -> None:
    """Chains :func:`_unraisablehook` in front of ``sys.unraisablehook`` and starts the
    helper thread (once; the thread sleeps until a signal must be handed back)."""
    global _prev_unraisablehook
    _start_redeliverer()
    if sys.unraisablehook is _unraisablehook:
        return
    _prev_unraisablehook = sys.unraisablehook
    sys.unraisablehook = _unraisablehook
