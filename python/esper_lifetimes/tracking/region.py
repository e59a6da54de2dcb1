"""A tracker's region and its policy: entering and leaving a thread, threads started
inside it, safe points (where errors are raised or warned), internal failures.

The region attaches a :class:`~esper_lifetimes.tracking.dispatch.Mode` and the patches
(:mod:`esper_lifetimes.patches`) to the entering thread. Raising waits for a safe point:
after each op, in patched calls, on exit, and never in a finalizer.
"""

from __future__ import annotations

import threading
from typing import Any

from esper_lifetimes import Engine, Hazard, patches, virtual
from esper_lifetimes.fixes import fix_for
from esper_lifetimes.reports.text import format_report
from esper_lifetimes.sites import SiteTable
from esper_lifetimes.tracking.dispatch import Mode
from esper_lifetimes.tracking.follow import follow_compiled, follow_threads
from esper_lifetimes.tracking.policy import (
    RAISE,
    WARN,
    LifetimeHazardError,
    in_finalizer,
    switch,
    warn_hazards,
)

__all__ = ["RegionMixin"]


class RegionMixin:
    """Region and policy of :class:`~esper_lifetimes.tracking.Tracker` (its state is set in
    ``Tracker.__init__``)."""

    def __enter__(self) -> Any:
        if self._state != "new":
            raise RuntimeError("a Tracker is entered once; call track() again")
        if not switch.enabled:
            self._state = "disabled"
            return self
        self._start()
        self._attach()
        self._state = "active"
        self._owner = threading.get_ident()
        return self

    def __exit__(self, et: Any, ev: BaseException | None, tb: Any) -> bool:
        if self._state != "active":
            return False
        owner = getattr(self, "_owner", None)
        if owner is not None and owner != threading.get_ident():
            # its dispatch mode and patch state live on the entering thread: leave them
            # as they are (that thread can still exit the region) and refuse
            raise RuntimeError(
                f"a track() region is exited on the thread that entered it (entered on "
                f"thread {owner}, exited on thread {threading.get_ident()}); nothing "
                "was changed: exit it on its own thread"
            )
        try:
            self._detach()
        finally:
            self._state = "closed"
            self._close()
        self.safe_point(exc=ev, final=True)
        return False

    @property
    def active(self) -> bool:
        return self._state == "active"

    def _start(self) -> None:
        eng = Engine() if self.timeline is None else self.timeline.wrap(Engine())
        self._eng = eng
        self._sites = SiteTable(eng)
        self._site_ids = self._sites.ids
        self._err_signal.clear()
        eng.set_error_signal(self._err_signal)  # the dispatch mode's per-op check
        self._access = eng.access
        self._alloc = eng.alloc
        # a fresh output's alloc and whole write in one call (a recording engine records
        # them as the vocabulary's two events)
        self._alloc_write = eng.alloc_write
        self._on_free_cb = self._on_free  # one bound method for every weakref
        self.watching = True
        for s in virtual.all_streams():
            self.define_virtual_stream(s)
        patches.add_live(self)

    def _push_mode(self) -> Mode:
        """Installs the patches and pushes a dispatch mode of this tracker on this thread."""
        patches.install()
        try:
            mode = Mode(self)
            mode.__enter__()
        except BaseException:
            patches.uninstall()
            raise
        patches.push(self, mode)
        return mode

    def _attach(self) -> None:
        self._push_mode()
        follow_threads(1)
        follow_compiled(1)

    def _detach(self) -> None:
        mode = patches.pop(self)
        try:
            if mode is not None:
                mode.__exit__(None, None, None)
        finally:
            follow_threads(-1)
            follow_compiled(-1)
            patches.uninstall()

    def _enter_thread(self) -> bool:
        """A thread started inside this tracker's region begins: its ops are tracked
        too, each on that thread's own current stream. Its hazards surface at the
        region's safe points (never raised in the thread)."""
        if not self.watching:
            return False
        mode = self._push_mode()
        self._tls.child = True
        with self._lock:
            self._child_modes.add(mode)
        return True

    def _exit_thread(self) -> None:
        mode = patches.pop(self)
        try:
            if mode is not None:
                with self._lock:
                    self._child_modes.discard(mode)
                mode.__exit__(None, None, None)
        finally:
            self._tls.child = False
            patches.uninstall()

    def _close(self) -> None:
        with self._lock:
            for mode in self._child_modes:
                mode.suspended += 1  # a thread outliving the region: no longer tracked
            self._child_modes.clear()
        # the end of the region (or of the shared tracker): every pending free is
        # judged now, and per-site record_stream advice is decided
        if self.watching and self._eng is not None:
            try:
                self._eng.flush()
            except Exception as exc:
                self.note(exc, "flush")
        self.watching = False
        patches.discard_live(self)
        self._recs.clear()
        self._owner_of.clear()
        self._members.clear()
        self._orphans.clear()

    def linger(self) -> None:
        """Ends the region on this thread but keeps watching what it registered: the
        storages still alive (a module- or session-scoped fixture's, a cache's) have
        their frees judged later, at :meth:`flush` or :meth:`close`. The pytest plugin
        uses this for a test that leaves storages alive."""
        if self._state != "active":
            return
        try:
            self._detach()
        finally:
            self._state = "closed"

    def flush(self) -> None:
        """The engine takes its verdict on every pending free now (``Engine.flush``)."""
        if self._eng is not None:
            try:
                self._eng.flush()
            except Exception as exc:
                self.note(exc, "flush")

    def close(self) -> None:
        """Stops watching: pending frees are judged, and the storages still alive are
        forgotten (their frees are not seen). Exiting the ``with`` block closes too."""
        if self._state == "active":
            self.__exit__(None, None, None)
            return
        self._state = "closed"
        self._close()

    def _current_policy(self) -> int:
        if self._shared:
            p = getattr(self._tls, "policy", None)
            if p is not None:
                return p
        return self.policy

    def safe_point(self, exc: BaseException | None = None, final: bool = False) -> None:
        eng = self._eng
        if eng is None:
            return
        if self._tls.__dict__.get("child"):
            return  # a thread the region follows: its hazards surface in the region
        if patches.signal_pending():
            patches.raise_pending()  # a signal's exception caught in a callback of ours
        self._err_signal.clear()  # cleared before the count is read: none is missed
        n = eng.error_count()
        if n == self._errors_seen and not self._held:
            return
        with self._lock:
            held, self._held = self._held, []
            pol = self._held_policy
            self._held_policy = -1
            new: list[Hazard] = []
            if n != self._errors_seen:
                new = eng.hazards(self._seen)
                self._seen += len(new)
                self._errors_seen = n
                pol = max(pol, self._current_policy(), self._pending_policy)
                self._pending_policy = -1
                fp = self._free_policy
                if fp:
                    for h in new:
                        if h.severity == "error" and h.ptr in fp:
                            pol = max(pol, fp.pop(h.ptr))
        errors = held + [h for h in new if h.severity == "error"]
        if not errors:
            return
        if pol == RAISE and exc is None and in_finalizer():
            # A finalizer swallows what it raises: hold the errors for the next real
            # safe point (the next op, patched call or @checked call) or the region's exit
            with self._lock:
                self._held = errors + self._held
                self._held_policy = max(self._held_policy, pol)
            return
        text = format_report(errors, fix_for=fix_for)
        if pol == RAISE:
            if exc is None:
                raise LifetimeHazardError(text, errors)
            if hasattr(exc, "add_note"):
                exc.add_note(text)
        elif pol == WARN:
            warn_hazards(text)

    def note(self, exc: BaseException, where: str) -> None:
        self._diag_count += 1
        if len(self._diag) < 20:
            self._diag.append(f"{where}: {type(exc).__name__}: {exc}")
