"""A tracker's storages: registering each the first time it is seen, one engine access
per tensor an op touches, memory shared by several storage objects, and frees.

A storage is registered as a fresh output (its allocation stream is the one current at
its creation, its site the op's) or, first seen as an input, adopted on the default
stream. Its free is seen by the weakref callback of its :class:`~.memory.Ref` and by the
patched ``UntypedStorage.resize_``; the callback never raises.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from esper_lifetimes import LifetimesError, patches, virtual
from esper_lifetimes.tracking.memory import (
    CUDA,
    HOST,
    VIRTUAL,
    Ref,
    cuda_current,
    cuda_default,
    emu_host,
    host_marks,
    span,
    vcurrent,
)

if TYPE_CHECKING:
    from esper_lifetimes.tracking.tracker import Tracker

__all__ = ["StorageMixin", "remember_free_policy"]


class StorageMixin:
    """Storage registration, accesses and frees of :class:`~esper_lifetimes.tracking.Tracker`."""

    def _touch(
        self,
        t: torch.Tensor,
        write: bool,
        site: Any,
        vh: int | None = None,
        on: int | None = None,
    ) -> int | None:
        """One access by the current op (``vh``: the current virtual stream's handle,
        when known; ``on``: the stream it runs on, whatever the current one). Returns
        the stream it ran on (None: host memory)."""
        try:
            st = t.untyped_storage()
        except Exception:  # sparse, nested, or a subclass without storage
            return None
        key = id(st)
        ref = self._recs.get(key)
        if ref is None:
            try:
                ref = self._new_ref(t, st, key, False, None, False, vh)
            except RuntimeError:
                # a wrapper subclass (AsyncCollectiveTensor, DTensor) without data of its
                # own: the ops on its inner tensors are dispatched below this mode
                return None
            if ref is None:
                return None
        kind = ref.kind
        if kind == VIRTUAL:
            h = vh if vh is not None else vcurrent()
        elif kind == CUDA:
            if on is None:
                h = cuda_current(t.get_device())
                if h not in self._named:
                    self.name_cuda_stream(h)
            else:
                h = on  # named by whoever chose it
        else:
            if ref.pending:
                n = span(t)
                if n:
                    self._eng.host_access(t.data_ptr(), n, write, site)
            return None
        if h != ref.astream:
            ref.multi = True
        n = t.nbytes
        if n == ref.nbytes:
            # as many bytes as the storage holds: the view covers all of it
            p = ref.ptr
        else:
            if not t.is_contiguous():
                n = span(t)
            p = t.data_ptr()
        if n:
            try:
                self._access(p, n, h, write, site)
            except LifetimesError as exc:
                if self._resync(st, ref, site, h):
                    self._access(t.data_ptr(), span(t), h, write, site)
                else:
                    self.note(exc, "access")
        return h

    def touch(self, t: torch.Tensor, write: bool, site: Any, vh: int | None = None) -> int | None:
        """One access of ``t`` by the current op (``vh``: the current virtual stream's
        handle, when known). Returns the stream it ran on (None: host memory)."""
        return self._touch(t, write, site, vh)

    def touch_on(self, t: torch.Tensor, write: bool, site: Any, stream: int) -> None:
        """One access of ``t``'s bytes on stream ``stream``, whatever the current stream
        (a collective's internal stream, :mod:`esper_lifetimes.distributed`)."""
        self._touch(t, write, site, stream, stream)

    def register_fresh(self, t: torch.Tensor, site: Any, stream: int | None) -> None:
        """Registers ``t``'s storage, allocated just now on the current stream (``stream``:
        the current virtual stream's handle, None for CUDA), unless it is known."""
        st = t.untyped_storage()
        if id(st) not in self._recs:
            self._new_ref(t, st, id(st), True, site, False, stream)

    def _fresh(
        self,
        t: torch.Tensor,
        write: bool,
        site: Any,
        host: bool,
        vh: int | None = None,
    ) -> None:
        """A tensor an op returned that aliases none of its inputs (by its schema). A
        storage already known is an alias all the same (``_unsafe_view`` and kin):
        nothing is done for it."""
        try:
            st = t.untyped_storage()
        except Exception:
            return
        key = id(st)
        if key in self._recs:
            return
        ref = self._new_ref(t, st, key, True, site, host, vh)
        if ref is None or ref.kind == HOST:
            return
        if write:
            self._touch(t, True, site, vh)

    def _new_ref(
        self,
        t: torch.Tensor,
        st: Any,
        key: int,
        fresh: bool,
        site: Any,
        host: bool,
        vh: int | None = None,
    ) -> Ref | None:
        """Registers a storage seen for the first time (``fresh``: just allocated)."""
        if not fresh and not self._adopt_unseen:
            return None
        if t.is_cpu:
            if host or key in host_marks:
                ref = Ref(st, self._on_free_cb)
                ref.key = key
                ref.kind = HOST
                ref.ptr = st.data_ptr()
                ref.nbytes = st.nbytes()
                ref.registered = False
                ref.astream = 0
                ref.multi = False
                ref.pinned = True
                ref.pending = False
                if self._shared:
                    ref.policy = self._current_policy()
                self._recs[key] = ref
                return ref
            if not self._cpu_device or emu_host(st):
                return None
            kind = VIRTUAL
            if not fresh:
                stream = virtual.DEFAULT_HANDLE
            else:
                stream = vh if vh is not None else vcurrent()
        elif t.is_cuda:
            kind = CUDA
            dev = t.get_device()
            stream = cuda_current(dev) if fresh else cuda_default(dev)
            self.name_cuda_stream(stream)
        else:
            return None  # meta, or a device this tracker does not model
        ref = Ref(st, self._on_free_cb)
        ref.key = key
        ref.kind = kind
        ref.ptr = p = st.data_ptr()
        ref.nbytes = n = st.nbytes()
        ref.registered = False
        ref.astream = stream
        ref.multi = False
        if self._shared:
            ref.policy = self._current_policy()
        if n and p:
            if fresh:
                self._engine_alloc(ref, stream, site)
            else:
                self._engine_alloc(ref, stream, None, adopt=True)
        self._recs[key] = ref
        return ref

    def _host_ref(self, t: torch.Tensor, pinned: bool) -> Ref | None:
        """The host record of CPU tensor ``t`` (created when missing)."""
        st = t.untyped_storage()
        key = id(st)
        ref = self._recs.get(key)
        if ref is None:
            ref = self._new_ref(t, st, key, True, None, True)
            if ref is not None:
                ref.pinned = pinned
        if ref is None or ref.kind != HOST:
            return None
        if pinned:
            ref.pinned = True
        return ref

    def _engine_alloc(self, ref: Ref, stream: int, site: Any, adopt: bool = False) -> None:
        """Registers ``ref``'s bytes: ``alloc`` for an allocation seen now, ``adopt`` for
        a storage whose allocation the tracker did not see (never judged by
        ``unwaited-allocation``, no pending-free verdicts or reuse checks)."""
        eng = self._eng
        ref.astream = stream
        ref.multi = False
        register = eng.adopt if adopt else eng.alloc
        try:
            register(ref.ptr, ref.nbytes, stream, site)
        except LifetimesError as exc:
            # Overlaps a live storage: either one whose free the tracker has not seen yet
            # (its memory was handed out again), or a genuine alias of the same memory.
            if not self._evict_overlaps(ref.ptr, ref.nbytes):
                if not self._share(ref):
                    self.note(exc, "alloc (aliases live storage)")
                return
            try:
                register(ref.ptr, ref.nbytes, stream, site)
            except LifetimesError as exc2:
                self.note(exc2, "alloc")
                return
        ref.registered = True

    def _share(self, ref: Ref) -> bool:
        """``ref`` is a second storage object over bytes a live registered storage holds
        (``torch.from_numpy`` twice, ``frombuffer``, DLPack): it becomes a member of that
        storage. Its accesses go to the owner's bytes; the memory is freed, in the
        engine, when the last storage object over it dies. False when ``ref``'s bytes
        are not inside one registered storage."""
        found = self._eng.storage_at(ref.ptr)
        if found is None:
            return False
        base, n, _stream = found
        if ref.ptr + ref.nbytes > base + n:
            return False
        owner = None
        for cand in (*self._recs.values(), *self._orphans.values()):
            if cand.registered and cand.ptr == base and cand is not ref:
                owner = cand
                break
        if owner is None:
            return False
        root = self._owner_of.get(id(owner))
        if root is not None:
            owner = root
        self._owner_of[id(ref)] = owner
        self._members[id(owner)] = self._members.get(id(owner), 0) + 1
        ref.astream = owner.astream
        ref.kind = owner.kind
        return True

    def _release_shared(self, ref: Ref, multi: bool) -> bool:
        """A storage object of shared memory died. True when that was handled here: a
        member left (the owner's storage is dropped when it was the last and the owner
        died before), or the owner died while members hold the memory (kept until the
        last one dies)."""
        owner = self._owner_of.pop(id(ref), None)
        if owner is not None:
            if multi:
                owner.multi = True
            oid = id(owner)
            left = self._members.get(oid, 1) - 1
            if left > 0:
                self._members[oid] = left
                return True
            self._members.pop(oid, None)
            if self._orphans.pop(oid, None) is not None:
                self._drop(owner, self._sites.here(3) if owner.multi else None)
            return True
        if id(ref) in self._members:
            self._orphans[id(ref)] = ref
            return True
        return False

    def _evict_overlaps(self, ptr: int, nbytes: int) -> bool:
        """Frees (late) every stale storage over ``[ptr, ptr+nbytes)``; False when one of
        them is still alive at its recorded place."""
        end = ptr + nbytes
        ok = True
        for old in list(self._recs.values()):
            if not old.registered or old.ptr >= end or old.ptr + old.nbytes <= ptr:
                continue
            st = old()
            if st is not None:
                try:
                    if st.data_ptr() == old.ptr and st.nbytes() == old.nbytes:
                        ok = False
                        continue
                except Exception:
                    pass
            self._drop(old, None)
            self._diag_count += 1
            if len(self._diag) < 20:
                self._diag.append(f"late free of {old.ptr:#x}: seen after its reuse")
        return ok

    def _drop(self, ref: Ref, site: Any) -> None:
        """The engine-side free of a registered storage."""
        if not ref.registered:
            return
        ref.registered = False
        eng = self._eng
        if not self._shared:
            eng.free(ref.ptr, site)
            return
        before = eng.error_count()
        eng.free(ref.ptr, site)
        if eng.error_count() != before:
            if ref.policy > self._pending_policy:
                self._pending_policy = ref.policy
        elif ref.multi:
            remember_free_policy(self, ref)

    def _resync(self, st: Any, ref: Ref, site: Any, stream: int | None) -> bool:
        """The storage's memory moved or changed size (``resize_``, ``set_``, an ``out=``
        argument resized): free the old bytes, allocate the new. True when it did."""
        ptr, n = st.data_ptr(), st.nbytes()
        if ptr == ref.ptr and n == ref.nbytes:
            return False
        if ref.kind == HOST:
            if ref.pending:
                self._eng.host_release(ref.ptr, ref.nbytes)
                ref.pending = False
            ref.ptr, ref.nbytes = ptr, n
            return True
        if ref.registered:
            self._drop(ref, site)
        ref.ptr, ref.nbytes = ptr, n
        if n and ptr:
            if stream is None:
                stream = self._alloc_stream_now(ref, st)
            self._engine_alloc(ref, stream, site)
        return ref.registered

    def _alloc_stream_now(self, ref: Ref, st: Any) -> int:
        if ref.kind == CUDA:
            h = cuda_current(st.device.index)
            self.name_cuda_stream(h)
            return h
        return vcurrent()

    def _on_free(self, ref: Ref) -> None:
        """weakref callback: the storage died. Never raises."""
        try:
            recs = self._recs
            key = ref.key
            other = recs.pop(key, None)
            if other is not ref and other is not None:
                recs[key] = other  # not this record's entry (it was replaced)
            if not self.watching:
                return
            if ref.kind == HOST:
                if ref.pending:
                    ref.pending = False
                    self._eng.host_release(ref.ptr, ref.nbytes)
                return
            if self._members and self._release_shared(ref, ref.multi):
                return
            if ref.registered:
                # a storage only ever used on its allocation stream frees without a site:
                # no verdict of its free can name one
                if ref.multi:
                    self._drop(ref, self._sites.here(2))
                elif self._shared:
                    self._drop(ref, None)
                else:
                    ref.registered = False
                    self._eng.free(ref.ptr, None)
        except Exception as exc:
            self.note(exc, "free")
        except BaseException as exc:  # a signal landed here: Python would swallow it
            patches.redeliver(exc)


def remember_free_policy(tr: Tracker, ref: Ref) -> None:
    """The shared tracker: a free used on another stream may be judged later (at the
    next allocation on its stream, or at flush); its storage's policy applies then."""
    fp = tr._free_policy
    if len(fp) >= 4096:
        try:
            if not tr._eng.stats().get("pending_frees"):
                fp.clear()  # every earlier free has its verdict
        except Exception:
            fp.clear()
        if len(fp) >= 65536:
            fp.clear()  # bounded: a later verdict then takes the current policy
    if fp.get(ref.ptr, -1) < ref.policy:
        fp[ref.ptr] = ref.policy
