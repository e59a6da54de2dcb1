"""A tracker's host/device copies: which side each tensor is on, pinned memory, the
copy's stream, and the host waits that blocking copies imply.

A copy between host and device is enqueued on the current stream; one made without
``non_blocking=True`` is followed by the host waiting for that stream. A device copy
touching pinned memory is a device access of host memory on its stream, checked against
the other copies over those bytes and against host accesses.
"""

from __future__ import annotations

from typing import Any

import torch

from esper_lifetimes import virtual
from esper_lifetimes.tracking import memory
from esper_lifetimes.tracking.memory import HOST, emu_host, host_marks, span
from esper_lifetimes.tracking.plans import TO_COPY, Plan

__all__ = ["CopyMixin"]

_Tensor = torch.Tensor
_SEQ = (list, tuple)


class CopyMixin:
    """Host/device copies of :class:`~esper_lifetimes.tracking.Tracker`."""

    def _maybe_copy(
        self, plan: Plan, args: tuple, kwargs: dict, out: Any, site: Any, vh: int | None
    ) -> None:
        """An op that may return its input or a copy (``to``, ``contiguous``, ``reshape``
        under inference mode): what it did is told by the result's storage, not by the
        schema. A result over a storage of no argument is a fresh copy."""
        i = plan.alias_i
        src = args[i] if i < len(args) else kwargs.get(plan.alias_name)
        if not isinstance(src, _Tensor):
            return
        try:
            skey = id(src.untyped_storage())
        except Exception:
            return
        outs = out if isinstance(out, _SEQ) else (out,)
        fresh = []
        for o in outs:
            if isinstance(o, _Tensor) and o is not src:
                try:
                    if id(o.untyped_storage()) != skey:
                        fresh.append(o)
                except Exception:
                    continue
        if not fresh:
            return  # an alias after all: no bytes touched
        if plan.name == "aten::to":
            nb = plan.non_blocking(args, kwargs)
            for o in fresh:
                self._copy_tensors(src, o, True, nb, site)
            return
        self._touch(src, False, site, vh)
        n = len(args)
        for j, name, w in plan.pos:
            a = args[j] if j < n else kwargs.get(name)
            if isinstance(a, _Tensor):
                self._touch(a, w, site, vh)
        pin = plan.name == "aten::pin_memory"
        for o in fresh:
            self._fresh(o, not pin, site, pin, vh)

    def _blocking_sync(self, h: int) -> None:
        """The host waits for stream ``h`` (a blocking op enqueued on it)."""
        self._eng.stream_synchronize(h)
        vs = virtual.streams.get(h)
        if vs is not None:
            vs._pending = False

    def _side(self, t: torch.Tensor) -> str:
        if t.is_cuda:
            return "d"
        if not t.is_cpu:
            return "-"
        st = t.untyped_storage()
        key = id(st)
        ref = self._recs.get(key)
        if ref is not None:
            return "h" if ref.kind == HOST else "d"
        if key in host_marks or not self._cpu_device or emu_host(st):
            return "h"
        return "d"

    def _is_pinned(self, t: torch.Tensor) -> bool:
        ref = self._recs.get(id(t.untyped_storage()))
        if ref is not None and ref.kind == HOST and ref.pinned:
            return True
        if id(t.untyped_storage()) in host_marks:
            return True
        if self._cuda_ok:
            try:
                return bool(t.is_pinned())
            except Exception:
                return False
        return False

    def _copy(self, plan: Plan, args: tuple, kwargs: dict, out: Any, site: Any) -> None:
        if plan.special == TO_COPY:
            src = args[0] if args else kwargs.get("self")
            dst = out
        else:
            dst = args[0] if args else kwargs.get("self")
            src = args[1] if len(args) > 1 else kwargs.get("src")
        if not isinstance(src, _Tensor) or not isinstance(dst, _Tensor):
            return
        nb = plan.non_blocking(args, kwargs)
        self._copy_tensors(src, dst, plan.special == TO_COPY, nb, site)

    def _copy_tensors(
        self, src: torch.Tensor, dst: torch.Tensor, fresh: bool, nb: bool, site: Any
    ) -> None:
        """A copy from ``src`` into ``dst`` (``fresh``: a new tensor the op returned).

        Host and device: a copy between them is enqueued on the current stream; one made
        without ``non_blocking=True`` is followed by the host waiting for that stream.
        A device copy touching pinned memory is a device access of host memory on its
        stream (``copy_to_host``: a write, ``copy_from_host``: a read), checked against
        the other copies over those bytes and against host accesses; never a host access.
        """
        s_side = self._side(src)
        if fresh:
            if dst.is_cuda:
                d_side = "d"
            elif not dst.is_cpu:
                d_side = "-"
            elif memory.emulating:
                d_side = "h" if emu_host(dst.untyped_storage()) else "d"
            elif src.is_cuda or s_side == "h":
                d_side = "h"
            else:
                d_side = "d" if self._cpu_device else "h"
        else:
            d_side = self._side(dst)
        eng = self._eng
        if s_side == "h" and d_side == "d":
            # host to device: the write runs on the destination's stream
            h = self._dst(dst, fresh, site)
            if h is None:
                return
            if self._is_pinned(src):
                ref = self._host_ref(src, True)
                n = span(src)
                if ref is not None and n:
                    eng.copy_from_host(src.data_ptr(), n, h, site)
                    ref.pending = True
            else:
                # pageable memory: the host copies the source out before the call returns
                self._touch(src, False, site)
            if not nb:
                self._blocking_sync(h)
        elif s_side == "d" and d_side == "h":
            h = self._touch(src, False, site)
            if h is None:
                return
            # torch pins the output of a non-blocking device-to-host _to_copy
            pinned = (nb and (src.is_cuda or memory.emulating)) if fresh else self._is_pinned(dst)
            if pinned:
                ref = self._host_ref(dst, True)
                n = span(dst)
                if ref is not None and n:
                    eng.copy_to_host(dst.data_ptr(), n, h, site)
                    ref.pending = True
                if not nb:
                    self._blocking_sync(h)
            else:
                # into pageable memory, which CUDA makes synchronous
                self._blocking_sync(h)
                if not fresh:
                    self._touch(dst, True, site)
                else:
                    self._host_ref(dst, False)
        else:
            self._touch(src, False, site)
            if fresh:
                self._fresh(dst, True, site, d_side == "h")
            else:
                self._touch(dst, True, site)

    def _dst(self, dst: torch.Tensor, fresh: bool, site: Any) -> int | None:
        if fresh:
            self._fresh(dst, False, site, False)
        return self._touch(dst, True, site)
