"""The tracker: one engine, and what a region (or every ``@checked`` call) did to it.

:class:`Tracker` is assembled from one mixin per concern, each in its own file:

* :mod:`~esper_lifetimes.tracking.region`: entering and leaving threads, the policy,
  safe points;
* :mod:`~esper_lifetimes.tracking.storages`: registering storages, accesses, frees;
* :mod:`~esper_lifetimes.tracking.copies`: host/device copies and pinned memory;
* :mod:`~esper_lifetimes.tracking.apply`: the ops that need more than their schema;
* :mod:`~esper_lifetimes.tracking.hooks`: events from patched calls.

The per-op hot path is :mod:`~esper_lifetimes.tracking.dispatch`; the state every mixin
shares is set here, in :meth:`Tracker.__init__`.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any

import torch

from esper_lifetimes import Hazard
from esper_lifetimes.fixes import fix_for
from esper_lifetimes.reports.text import format_report
from esper_lifetimes.sites import format_site, user_frame
from esper_lifetimes.tracking import memory
from esper_lifetimes.tracking.apply import ApplyMixin
from esper_lifetimes.tracking.copies import CopyMixin
from esper_lifetimes.tracking.dispatch import Mode
from esper_lifetimes.tracking.hooks import HookMixin
from esper_lifetimes.tracking.memory import Ref
from esper_lifetimes.tracking.policy import ConfigError, parse_policy
from esper_lifetimes.tracking.region import RegionMixin
from esper_lifetimes.tracking.storages import StorageMixin

__all__ = ["Tracker", "track"]


class Tracker(RegionMixin, StorageMixin, CopyMixin, ApplyMixin, HookMixin):
    """Tracks one region (``with track() as t``) or, shared, every ``@checked`` call.

    Results: :attr:`hazards`, :attr:`errors`, :attr:`advice`, :meth:`report`,
    :attr:`diagnostics` (internal failures, normally empty), :attr:`engine`.
    """

    # Suspended while another tracker is active above it on the same thread (the pytest
    # plugin's per-test region and the always-on tracker set this; see patches.push).
    yield_to_inner = False

    def __init__(
        self, on_hazard: str = "raise", *, cpu: str | None = None, timeline: Any = None
    ) -> None:
        self.policy = parse_policy(on_hazard)
        if cpu is None:
            cpu = "host" if torch.cuda.is_available() and not memory.emulating else "device"
        if cpu not in ("device", "host"):
            raise ConfigError(f"cpu must be 'device' or 'host', not {cpu!r}")
        self.cpu = cpu
        # under CUDA emulation, emulated CUDA tensors are device memory whatever ``cpu`` says
        self._cpu_device = cpu == "device" or memory.emulating
        self._cuda_ok = torch.cuda.is_available() and not memory.emulating
        self._state = "new"
        self._shared = False
        self._eng: Any = None
        self._recs: dict[int, Ref] = {}
        self._named: set[int] = set()
        self._seen = 0  # hazards already passed to the policy (index into the list)
        self._errors_seen = 0  # engine.error_count() at the last safe point
        # appended to by the engine at each new error (Engine.set_error_signal), cleared
        # by safe_point: the dispatch mode's per-op check is this list's truth value
        self._err_signal: list[None] = []
        self._pending_policy = -1  # strictest policy of storages freed with new errors
        # shared (@checked): policy of storages whose free the engine may judge later
        # (a pending free, judged at the next alloc on its stream or at flush), by ptr
        self._free_policy: dict[int, int] = {}
        # errors held back from a finalizer (never a safe point), and their policy
        self._held: list[Hazard] = []
        self._held_policy = -1
        self.watching = False
        self._lock = threading.RLock()
        self._tls = threading.local()
        self._diag_count = 0
        self._diag: list[str] = []
        # Register a storage first seen as an input (allocated before tracking) on the
        # default stream. A tracker that sees only windows of a run sets it False.
        self._adopt_unseen = True
        # Memory shared by several storage objects (two from_numpy of one array,
        # frombuffer, DLPack): the first registered owns the engine storage, the others
        # are members over it. id(member ref) -> owner ref; id(owner ref) -> live members;
        # id(owner ref) -> owner whose storage died while members held the memory.
        self._owner_of: dict[int, Ref] = {}
        # What the report must say besides hazards: work that ran unseen, and work that
        # ran differently so that it could be seen; "what at site" -> count
        self._unseen: dict[str, int] = {}
        self._notes: dict[str, int] = {}
        # modes of threads started inside the region (suspended when it closes)
        self._child_modes: weakref.WeakSet[Mode] = weakref.WeakSet()
        self._members: dict[int, int] = {}
        self._orphans: dict[int, Ref] = {}
        # A reports.Timeline that records every engine call (for the Chrome trace and the
        # HTML report), or None: the engine is then used directly.
        self.timeline = timeline

    @property
    def engine(self) -> Any:
        """The engine (``None`` before the tracker starts, or when tracking is disabled)."""
        return self._eng

    @property
    def hazards(self) -> list[Hazard]:
        """Every distinct hazard found, in the order found."""
        return self._eng.hazards() if self._eng is not None else []

    @property
    def errors(self) -> list[Hazard]:
        return [h for h in self.hazards if h.severity == "error"]

    @property
    def advice(self) -> list[Hazard]:
        return [h for h in self.hazards if h.severity != "error"]

    @property
    def diagnostics(self) -> list[str]:
        """Internal failures (the first few, with a count): empty when all went well."""
        if self._diag_count > len(self._diag):
            return [*self._diag, f"... {self._diag_count - len(self._diag)} more"]
        return list(self._diag)

    def report(self, hazards: list[Hazard] | None = None) -> str:
        """The readable report of ``hazards`` (default: all found), followed by what ran
        unseen and what ran differently so that it was seen (``unseen``, ``notes``)."""
        hs = self.hazards if hazards is None else hazards
        text = format_report(
            hs, diagnostics=self._diag_count if hazards is None else 0, fix_for=fix_for
        )
        if hazards is None:
            extra = self._coverage_lines()
            if extra:
                text += "\n\n" + "\n".join(extra)
        return text

    @property
    def unseen(self) -> dict[str, int]:
        """Work that ran during the region without the tracker seeing its memory
        accesses (CUDA graph replays, collectives issued from C++, ...): ``"what at
        site"`` -> count. Hazards it hides cannot be reported: the report says so."""
        out = dict(self._unseen)
        dist = sys.modules.get("esper_lifetimes.distributed")
        if dist is not None:
            try:
                for k, n in dist.unseen(self).items():
                    out[k] = out.get(k, 0) + n
            except Exception:  # noqa: S110 - a report never fails
                pass
        return out

    @property
    def notes(self) -> dict[str, int]:
        """Work that ran differently so that it was tracked (``torch.compile``d
        functions run eagerly inside a region): ``"what at site"`` -> count."""
        return dict(self._notes)

    def _coverage_lines(self) -> list[str]:
        lines = []
        unseen = self.unseen
        if unseen:
            n = sum(unseen.values())
            where = "; ".join(f"{k} (x{c})" if c > 1 else k for k, c in unseen.items())
            lines.append(
                f"{n} op{'s' * (n != 1)} ran unseen ({where}): hazards they cause or hide "
                "are not in this report"
            )
        for k, c in self._notes.items():
            lines.append(f"note: {k}" + (f" (x{c})" if c > 1 else ""))
        return lines

    def _count(self, table: dict[str, int], what: str, depth: int) -> None:
        try:
            f = user_frame(depth)
            site = format_site(f.f_code.co_filename, f.f_lineno) if f is not None else None
            del f
        except Exception:
            site = None
        key = f"{what} at {site}" if site else what
        with self._lock:
            table[key] = table.get(key, 0) + 1

    def site_here(self, depth: int = 1) -> Any:
        """The site (an interned id) of the first user frame from ``depth`` frames up."""
        return self._sites.here(depth + 1)

    def site_text(self, site: Any) -> str:
        """The ``file:line`` text of an interned site ("" when unknown)."""
        return self._sites.text_of(site)

    def __repr__(self) -> str:
        n = len(self.hazards)
        return f"<esper_lifetimes.Tracker {self._state}, {n} hazard{'s' * (n != 1)}>"


def track(on_hazard: str = "raise", *, cpu: str | None = None, timeline: Any = None) -> Tracker:
    """Tracks the ``with`` block on the current thread: ``with track() as t: ...``.

    ``on_hazard``: ``"raise"`` (:class:`LifetimeHazardError` at the first safe point,
    at the latest on exit), ``"warn"`` (:class:`LifetimeHazardWarning`) or ``"collect"``.
    ``cpu``: ``"device"`` (CPU tensors stand for device memory on virtual streams) or
    ``"host"``; default ``"device"`` without a GPU, ``"host"`` with one.
    ``timeline``: a :class:`esper_lifetimes.reports.Timeline` that records the region's
    engine calls, for ``reports.write_all`` (give it ``max_events`` to bound its memory).
    """
    return Tracker(on_hazard, cpu=cpu, timeline=timeline)
