"""Applying an op plan whose op needs more than its schema (``.item()``, copies,
``torch.tensor``, pinning, ``resize_``, ops that may or may not copy, unseen work, and
the codes other modules register), and the fresh outputs of any op.

The plain ops' path is inlined in :mod:`~esper_lifetimes.tracking.dispatch`.
"""

from __future__ import annotations

from typing import Any

import torch

from esper_lifetimes.tracking.memory import HOST, VDEFAULT, vstate
from esper_lifetimes.tracking.plans import (
    COPY_,
    HANDLERS,
    LIFT,
    MAYBE,
    PIN,
    RESIZE,
    SCALAR,
    TO_COPY,
    UNSEEN,
    Plan,
)

__all__ = ["ApplyMixin"]

_Tensor = torch.Tensor
_SEQ = (list, tuple)


class ApplyMixin:
    """The special op plans and fresh outputs of :class:`~esper_lifetimes.tracking.Tracker`."""

    def _apply(self, plan: Plan, args: tuple, kwargs: dict, out: Any) -> None:
        """The ops that need more than their schema (copies, ``.item()``, ...)."""
        # frames: here (0), _apply (1), __torch_dispatch__ (2), torch's caller (3)
        site = self._sites.here(3)
        if self._cpu_device:
            vs = vstate.cur.stream
            if vs is None:
                vs = VDEFAULT
            vs._pending = True  # the op is work on the virtual stream
            vh = vs.handle
        else:
            vh = None
        sp = plan.special
        if sp == SCALAR:
            a = args[0] if args else None
            if isinstance(a, _Tensor):
                h = self._touch(a, False, site, vh)
                if h is not None:
                    self._eng.stream_synchronize(h)
        elif sp == COPY_ or sp == TO_COPY:
            self._copy(plan, args, kwargs, out, site)
        elif sp == LIFT:
            # torch.tensor(data[, device=...]): a blocking copy from Python data into a
            # new storage, then the host waits for the current stream
            a = args[0] if args else None
            if isinstance(a, _Tensor):
                st = a.untyped_storage()
                key = id(st)
                if key not in self._recs:
                    ref = self._new_ref(a, st, key, True, site, False, vh)
                    if ref is not None and ref.kind != HOST:
                        h = self._touch(a, True, site, vh)
                        if h is not None:
                            self._blocking_sync(h)
        elif sp == MAYBE:
            self._maybe_copy(plan, args, kwargs, out, site, vh)
        elif sp == PIN:
            for i, _name, w in plan.pos:
                if i < len(args) and isinstance(args[i], _Tensor):
                    self._touch(args[i], w, site, vh)
            if isinstance(out, _Tensor):
                self._fresh(out, False, site, True, vh)
        elif sp == RESIZE:
            a = args[0] if args else None
            if isinstance(a, _Tensor):
                st = a.untyped_storage()
                ref = self._recs.get(id(st))
                if ref is not None:
                    self._resync(st, ref, site, None)
        elif sp == UNSEEN:
            self._count(self._unseen, f"op {plan.name}", 3)
        else:
            handler = HANDLERS.get(sp)
            if handler is not None:
                handler(self, plan, args, kwargs, out, site, vh)

    def _outputs(self, out: Any, plan: Plan, site: Any, host: bool, vh: int | None) -> None:
        if not isinstance(out, _SEQ):
            return
        w = plan.write_out
        rf = plan.ret_fresh
        if len(rf) > 1 and len(rf) == len(out):
            for o, f in zip(out, rf, strict=True):
                if f:
                    self._walk_fresh(o, w, site, host, vh)
        elif rf and rf[0]:
            self._walk_fresh(out, w, site, host, vh)

    def _walk_fresh(self, o: Any, w: bool, site: Any, host: bool, vh: int | None) -> None:
        if isinstance(o, _Tensor):
            self._fresh(o, w, site, host, vh)
        elif isinstance(o, _SEQ):
            for x in o:
                self._walk_fresh(x, w, site, host, vh)
