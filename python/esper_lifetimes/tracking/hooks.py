"""A tracker's events from patched calls and virtual streams: stream and event waits,
records, synchronizations and queries, ``record_stream``, blocking host reads, resizes,
and the names of the streams it meets.

These ``on_*`` methods, with :meth:`safe_point`, :meth:`define_virtual_stream` and
:meth:`forget_event`, are the interface :mod:`esper_lifetimes.patches` and
:mod:`esper_lifetimes.virtual` call (their ``Watcher`` protocol). None raises: a failure
is counted in ``Tracker.diagnostics``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from esper_lifetimes import patches, virtual
from esper_lifetimes.tracking.memory import HOST, host_marks

__all__ = ["HookMixin"]


class HookMixin:
    """Events from patched calls of :class:`~esper_lifetimes.tracking.Tracker`."""

    def define_virtual_stream(self, s: virtual.Stream) -> None:
        eng = self._eng
        if eng is None or s.handle in self._named:
            return
        try:
            eng.define_stream(s.handle, s.name, True)
            self._named.add(s.handle)
        except Exception as exc:
            self.note(exc, "define_stream")

    def name_cuda_stream(self, h: int) -> None:
        if h in self._named:
            return
        self._named.add(h)
        try:
            dev = (h >> 48) & 0xFF
            sid = h & ((1 << 48) - 1)
            name = f"cuda:{dev} default" if sid == 0 else f"cuda:{dev} stream {sid:#x}"
            self._eng.define_stream(h, name, False)
        except Exception as exc:
            self.note(exc, "define_stream")

    def forget_event(self, h: int) -> None:
        try:
            if self._eng is not None:
                self._eng.forget_event(h)
        except Exception as exc:
            self.note(exc, "forget_event")

    def _guard(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            self.note(exc, what)

    def on_stream_wait(self, waiter: int, waited: int) -> None:
        self._name_if_cuda(waiter, waited)
        self._guard("wait_stream", self._eng.stream_wait, waiter, waited)

    def on_event_record(self, event: int, stream: int) -> None:
        self._name_if_cuda(stream)
        self._guard("event_record", self._eng.event_record, event, stream)

    def on_event_wait(self, event: int, stream: int) -> None:
        self._name_if_cuda(stream)
        self._guard("event_wait", self._eng.event_wait, event, stream)

    def on_stream_sync(self, stream: int) -> None:
        self._name_if_cuda(stream)
        self._guard("stream_synchronize", self._eng.stream_synchronize, stream)

    def on_event_sync(self, event: int) -> None:
        self._guard("event_synchronize", self._eng.event_synchronize, event)

    def on_device_sync(self) -> None:
        self._guard("device_synchronize", self._eng.device_synchronize)

    def on_stream_query(self, stream: int, complete: bool) -> None:
        self._name_if_cuda(stream)
        self._guard("stream_query", self._eng.stream_query, stream, complete)

    def on_event_query(self, event: int, complete: bool) -> None:
        self._guard("event_query", self._eng.event_query, event, complete)

    def _name_if_cuda(self, *handles: int) -> None:
        for h in handles:
            if h not in self._named and h & patches.CUDA_STREAM_TAG:
                self.name_cuda_stream(h)

    def on_record_stream(self, t: torch.Tensor, stream: int) -> None:
        try:
            self._name_if_cuda(stream)
            st = t.untyped_storage()
            key = id(st)
            ref = self._recs.get(key)
            if ref is None:
                ref = self._new_ref(t, st, key, False, None, False)
            if ref is None or ref.kind == HOST:
                return  # untracked (always-on outside a window): no site walk
            site = self._sites.here(2)
            owner = self._owner_of.get(id(ref)) if self._owner_of else None
            if owner is not None:
                ref = owner  # shared memory: the owner's storage holds the record
            elif not ref.registered:
                self._resync(st, ref, site, None)
            if ref.registered:
                ref.multi = True
                self._eng.record_stream(ref.ptr, stream, site)
        except Exception as exc:
            self.note(exc, "record_stream")

    def on_host_read(self, t: torch.Tensor, device_sync: bool = True) -> None:
        """A blocking host read of ``t`` (``tolist``, ``numpy``, printing, ``cpu``)."""
        try:
            if t.is_cpu and not self._cpu_device:
                key = id(t.untyped_storage())
                if key not in self._recs and key not in host_marks:
                    return
            site = self._sites.here(2)
            if not device_sync and self._side(t) == "d":
                return
            h = self._touch(t, False, site)
            if h is not None:
                self._eng.stream_synchronize(h)
        except Exception as exc:
            self.note(exc, "host read")

    def on_storage_resized(self, st: Any) -> None:
        try:
            ref = self._recs.get(id(st))
            if ref is None:
                return
            self._resync(st, ref, self._sites.here(2), None)
        except Exception as exc:
            self.note(exc, "resize_")
