"""The always-on tracker: cheap enough to leave on for a whole training run
(``esper_lifetimes.enable(mode="always-on")``, :mod:`esper_lifetimes.modes`).

Design (docs/ARCHITECTURE.md, "Always-on"): full tracking intercepts every aten op, which
a whole training run cannot pay. The always-on tracker keeps only the *rare* calls hooked
all the time — ``record_stream``, stream and event waits, records, queries and
synchronizations, blocking host reads — so the ordering model stays complete, and fully
tracks sampled *windows* of ops. A window opens, with probability ``sample``, at a
synchronization barrier (a device, stream or event synchronize, or a blocking host read:
the points every training loop already has, at the end of a pass or a step) and closes
at the next barrier, or after ``max_window_ops`` ops. Storages allocated inside a window
stay watched after it closes (a weakref each), so a free anywhere later is checked.

What it never does: add a device synchronization or device work, or raise into the
training loop. Hazards go to the ``logging`` logger ``esper_lifetimes`` (errors at ERROR,
advice at INFO), once per distinct hazard, and to an optional JSON Lines report file.

Blind spots (by construction): ops outside windows are not seen; a storage first seen
inside a window but allocated before it is not registered (its allocation stream is
unknown, and guessing it would invent false errors), so hazards on such storages are
missed; only the thread that called :func:`enable` is watched.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any

import torch

from esper_lifetimes import _core, config, merge, patches, virtual
from esper_lifetimes.tracking import ConfigError, Tracker, memory
from esper_lifetimes.tracking.dispatch import Mode

__all__ = [
    "AlwaysOnTracker",
    "DEFAULT_SAMPLE",
    "DEFAULT_MAX_WINDOW_OPS",
    "install_item_hook",
    "remove_item_hook",
]

log = logging.getLogger("esper_lifetimes")

# Half the barriers of a loop like benchmarks/bench_training_loop.py open a window that sees
# a whole step; sampled in blocks of 1/sample barriers (AlwaysOnTracker._draw), 0.005
# finds its planted hazard within 1,000 steps in every seed tried, at about 1% step cost
# for the windows (docs/ARCHITECTURE.md, "Always-on").
DEFAULT_SAMPLE = 0.005
DEFAULT_MAX_WINDOW_OPS = 20_000


class _WindowMode(Mode):
    """The tracker's dispatch mode for one window, with an op budget: past it, ops pass
    through untracked until the next barrier closes the window."""

    def __init__(self, tracker: AlwaysOnTracker, budget: int) -> None:
        super().__init__(tracker)
        self.budget = budget
        self.left = budget  # Mode counts down (no override here: no extra frame per op)

    @property
    def ops(self) -> int:
        """Ops dispatched to the window so far (tracked, then passed through)."""
        return self.budget - self.left + self.passed


class AlwaysOnTracker(Tracker):
    """The tracker of a whole run (``mode="always-on"`` samples windows, ``mode="full"``
    tracks every op). Results as any :class:`Tracker`: :attr:`hazards`, :attr:`errors`,
    :meth:`report`; plus :attr:`windows_opened`, :attr:`barriers`, :meth:`summary`."""

    # The hooks take this tracker's fast path while it is alone on a thread
    # (patches._ThreadState.fast).
    _fast_hooks = True

    def __init__(
        self,
        mode: str = "always-on",
        *,
        sample: float = DEFAULT_SAMPLE,
        seed: int | None = None,
        report: str | None = None,
        max_window_ops: int = DEFAULT_MAX_WINDOW_OPS,
        cpu: str | None = None,
        timeline: Any = None,
    ) -> None:
        super().__init__(on_hazard="collect", cpu=cpu, timeline=timeline)
        if mode not in ("full", "always-on"):
            raise ConfigError(f"mode must be 'full' or 'always-on', not {mode!r}")
        try:
            config.check_enable(
                mode,
                {
                    "sample": sample,
                    "seed": seed,
                    "report": report,
                    "max_window_ops": max_window_ops,
                },
                where="AlwaysOnTracker",
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.mode = mode
        self._hooks: Any = None  # the compiled hooks (_core.AlwaysOnHooks), from start()
        self._sample = 1.0 if mode == "full" else float(sample)
        self.seed = seed
        self.max_window_ops = max_window_ops
        # under torchrun each rank appends to its own file, its records tagged
        self.report_path = merge.rank_file(report) if report else report
        info = merge.env_rank()
        self._rank_tag = {} if info is None else {"rank": info[0], "world_size": info[1]}
        # Storages first seen inside a window, allocated before it: not registered.
        self._adopt_unseen = mode == "full"
        # A track() region or @checked call inside the run owns its own events.
        self.yield_to_inner = True
        self._rng = random.Random(seed)
        # Window boundaries (the start is boundary 0, each barrier the next) are sampled
        # in blocks of 1/sample: exactly one window opens per block, at a uniformly drawn
        # boundary of it (see _draw). The boundary count and the next opening live on
        # the compiled hooks, which advance them at a barrier in the common case.
        self._block = 0
        self._scheduled_for = -1.0  # the sample the schedule was drawn for
        self._window: _WindowMode | None = None
        self._thread = 0
        self._logged = 0
        self._report_file: Any = None
        self._started_at = 0.0
        self.windows_opened = 0
        self._ops_closed = 0  # ops checked in windows already closed

    @property
    def sample(self) -> float:
        """The probability that a barrier opens a window (settable while running)."""
        return self._sample

    @sample.setter
    def sample(self, value: float) -> None:
        self._sample = float(value)
        self._requick()

    @property
    def barriers(self) -> int:
        """The synchronization barriers seen on the watched thread."""
        h = self._hooks
        return h.barriers if h is not None else 0

    # -- life ---------------------------------------------------------------------------

    def start(self) -> AlwaysOnTracker:
        if self._state != "new":
            raise RuntimeError("an AlwaysOnTracker is started once")
        if self.report_path:
            try:
                self._report_file = open(self.report_path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError as exc:
                raise ConfigError(
                    f"report={self.report_path!r} cannot be written: {exc.strerror or exc}"
                ) from None
        self._start()
        self._thread = threading.get_ident()
        self._install_hooks()
        patches.install()
        patches.push(self, None)
        install_item_hook(self)
        self._state = "active"
        self._started_at = time.monotonic()
        # The start is the first window boundary: the ops before the first sync are
        # sampled like any other stretch between barriers.
        if self._draw() or self.mode == "full":
            self._open_window()
        return self

    def stop(self) -> None:
        if self._state != "active":
            return
        try:
            self._close_window()
            patches.pop(self)
            patches.uninstall()
            remove_item_hook(self)
        finally:
            self._remove_hooks()
            self._state = "closed"
            self._close()  # engine.flush(): every pending free is judged now ...
            self.safe_point()  # ... and logged with the rest
            self._write({"event": "summary", **self.summary()})
            if self._report_file is not None:
                self._report_file.close()
                self._report_file = None

    # The hooks the patches and virtual streams call, compiled (rust/hooks.rs): set as
    # instance attributes over the Python methods while the tracker runs.
    _COMPILED = (
        "on_stream_wait",
        "on_event_record",
        "on_event_wait",
        "on_stream_query",
        "on_event_query",
        "on_stream_sync",
        "on_event_sync",
        "on_device_sync",
    )

    def _install_hooks(self) -> None:
        h = _core.AlwaysOnHooks(
            self._eng,
            self,
            self._thread,
            patches.thread_state.__dict__,
            virtual.thread_stream().__dict__,
            virtual.DEFAULT,
            memory.host_marks,
            self._named,
            self._recs,
            cpu_device=bool(self._cpu_device),
            full=self.mode == "full",
            adopt_unseen=bool(self._adopt_unseen),
        )
        h.emulating = memory.emulating
        self._hooks = h
        for name in self._COMPILED:
            setattr(self, name, getattr(h, name))
        patches.add_hooks(h)  # before push(): told when this thread's `fast` slot is set

    def _remove_hooks(self) -> None:
        h = self._hooks
        if h is None:
            return
        h.active = False
        patches.discard_hooks(h)
        for name in self._COMPILED:
            self.__dict__.pop(name, None)

    def _requick(self) -> None:
        """Tells the hooks whether a barrier's common case applies: no window open and
        the schedule drawn for the current rate."""
        h = self._hooks
        if h is not None:
            h.quick = self._window is None and self._sample == self._scheduled_for

    def summary(self) -> dict[str, Any]:
        """Counts for logs and benchmarks."""
        hs = self.hazards
        eng = self.engine
        return {
            "mode": self.mode,
            "sample": self.sample,
            "barriers": self.barriers,
            "windows_opened": self.windows_opened,
            "ops_checked": self.ops_checked(),
            "errors": sum(1 for h in hs if h.severity == "error"),
            "advice": sum(1 for h in hs if h.severity != "error"),
            "engine": eng.stats() if eng is not None else {},
            "internal_errors": len(self.diagnostics),
        }

    # -- windows --------------------------------------------------------------------------

    def _open_window(self) -> None:
        mode = _WindowMode(self, self.max_window_ops)
        mode.__enter__()
        self._window = mode
        patches.set_mode(self, mode)
        self.windows_opened += 1
        self._requick()

    def _close_window(self) -> None:
        mode = self._window
        if mode is None:
            return
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        if _get_current_dispatch_mode() is not mode:
            return  # another mode was entered inside the window: close at a later barrier
        self._window = None
        self._ops_closed += min(mode.ops, mode.budget)
        patches.set_mode(self, None)
        mode.__exit__(None, None, None)
        self._requick()

    def ops_checked(self) -> int:
        """How many ops the windows tracked so far (the open one included)."""
        w = self._window
        return self._ops_closed + (min(w.ops, w.budget) if w is not None else 0)

    def _draw(self) -> bool:
        """Whether a window opens at this boundary. Boundaries are sampled in blocks of
        ``1/sample`` (stratified): block k covers boundaries [k/sample, (k+1)/sample) and
        opens exactly one window, at ``floor((k + U) / sample)`` with U uniform in [0, 1)
        from the seeded generator. Each boundary opens a window with probability
        ``sample``, as with a coin per boundary, but the windows are spread evenly: no
        long gaps (at most 2/sample boundaries between two windows) and no bursts."""
        h = self._hooks
        i = h.boundary
        h.boundary = i + 1
        s = self._sample
        nxt = h.next_open
        try:
            if s != self._scheduled_for:  # the first draw, or the rate was changed
                self._scheduled_for = s
                if s <= 0.0:
                    nxt = -1
                    return False
                self._block = int(i * s)
                nxt = int((self._block + self._rng.random()) / s)
                if nxt < i:  # drawn in the part of the block already passed
                    self._block += 1
                    nxt = int((self._block + self._rng.random()) / s)
            if i != nxt:
                return False
            while nxt <= i:  # several openings at one boundary (sample > 0.5)
                self._block += 1
                nxt = int((self._block + self._rng.random()) / s)
            return True
        finally:
            h.next_open = nxt
            self._requick()

    def _barrier(self) -> None:
        """A synchronization point: the window boundary, when it is on the watched thread
        and this tracker owns the thread's events (no track() region or @checked call
        above it). The compiled hooks call this only when they cannot tell."""
        if self._state != "active":
            return
        st = patches.thread_state
        if st.fast is not self:  # not alone on this thread (the slot is per thread)
            if threading.get_ident() != self._thread:
                return
            active = st.active
            if not active or active[-1] is not self:
                return  # a track() region or @checked call owns the thread: no window games
        self._hooks.barrier()

    def _barrier_slow(self, window: bool) -> None:
        """What a barrier does beyond the common case (the hooks call it): ``window``,
        close the open window and draw whether one opens here; then log new hazards."""
        st = patches.thread_state
        if window:
            # Window switching and logging run Python (and a log handler, anything): the
            # patched calls they make are not events of the program.
            st.depth += 1
            try:
                if self._window is not None:
                    self._close_window()
                if self._draw() and self._window is None:
                    self._open_window()
            except Exception as exc:  # never into the training loop
                self.note(exc, "window")
            finally:
                st.depth -= 1
        # The hooks skip safe points while this tracker is alone on the thread: new
        # hazards are logged here.
        try:
            new = self._eng.hazard_count() != self._logged
        except Exception:
            new = True
        if new:
            st.depth += 1
            try:
                self.safe_point()
            finally:
                st.depth -= 1

    # The ordering calls and barriers (on_stream_wait, on_stream_sync, ...) are the
    # compiled hooks' while the tracker runs (_install_hooks); the generic ones of
    # HookMixin stay underneath. The rest:

    def on_host_read(self, t: Any, device_sync: bool = True) -> None:
        super().on_host_read(t, device_sync)
        self._blocking_read(t)

    def _item_slow(self, t: Any) -> None:
        """``.item()`` on the watched thread when the hooks cannot decide alone: under
        CUDA emulation (the tensor's real device), or with another tracker on the thread."""
        if memory.emulating:
            with torch._C.DisableTorchFunction():
                self._blocking_read(t)
        else:
            self._blocking_read(t)

    def _blocking_read(self, t: Any) -> None:
        """A blocking host read of ``t`` (``.item()``, ``tolist``, printing, ...). A read of
        device memory synchronizes the *current* stream (SEMANTICS.md, fact 6), whether or
        not ``t`` is tracked: outside windows most tensors are not, and a missed sync would
        leave a later free looking uncovered. It is also a window barrier."""
        try:
            if t.is_cpu:
                if not self._cpu_device:
                    return  # host memory: no stream synchronized, no barrier
                if _host_marks or memory.emulating:  # else no CPU storage is host memory
                    st = t.untyped_storage()
                    if id(st) in _host_marks or memory.emu_host(st):
                        return
                vs = _vstate.cur.stream
                h = (vs if vs is not None else _VDEFAULT).handle  # memory.vcurrent()
            elif t.is_cuda:
                h = memory.cuda_current(t.get_device())
            else:
                return
            self._eng.stream_synchronize(h)
        except Exception as exc:
            self.note(exc, "blocking read")
            return
        self._barrier()

    # -- reporting ------------------------------------------------------------------------

    def safe_point(self, exc: BaseException | None = None, final: bool = False) -> None:
        """Logs each new distinct hazard once; never raises."""
        eng = self._eng
        if eng is None:
            return
        try:
            if eng.hazard_count() == self._logged:
                return
            new = eng.hazards(self._logged)
            self._logged += len(new)
            if self._hooks is not None:
                self._hooks.logged = self._logged
            self._seen = self._logged
            self._errors_seen = eng.error_count()
            for h in new:
                level = logging.ERROR if h.severity == "error" else logging.INFO
                log.log(level, "%s", h.message)
                self._write({"event": "hazard", **h.to_dict()})
        except Exception as exc:
            self.note(exc, "report")

    def _write(self, record: dict[str, Any]) -> None:
        f = self._report_file
        if f is None:
            return
        try:
            record["time"] = round(time.monotonic() - self._started_at, 6)
            record.update(self._rank_tag)
            f.write(json.dumps(record) + "\n")
            f.flush()
        except Exception as exc:
            self.note(exc, "report file")


# ---------------------------------------------------------------------------------------
# ``Tensor.item()`` dispatches ``_local_scalar_dense`` only to a dispatch mode, so outside
# windows it is invisible; it is the one sync many loops have (``loss.item()``). While an
# always-on tracker runs, ``torch.Tensor.item`` is a compiled method (rust/hooks.rs,
# ``item_method``: a C method of TensorBase, as torch's own is, so the call builds no bound
# method and runs no Python frame) that calls torch's and then reports the read to the
# tracker's compiled hooks (AlwaysOnHooks.after_item: a thread-id check, then the
# blocking read and the barrier).

_torch_item = torch.Tensor.item
# the class that defines it (torch._C.TensorBase; _TensorBase in older torch releases)
_item_base = next(c for c in torch.Tensor.__mro__ if "item" in vars(c))
_item = _core.item_method(_item_base, _torch_item)
_host_marks = memory.host_marks
_vstate = memory.vstate
_VDEFAULT = memory.VDEFAULT

# The tracker whose thread the hook reports (the one started last), and the patch.
_started: AlwaysOnTracker | None = None
_item_patch: patches.PatchSet | None = None


def install_item_hook(tracker: AlwaysOnTracker | None = None) -> None:
    """Reports ``Tensor.item()`` to ``tracker`` (benchmarks install it alone, with None)."""
    global _started, _item_patch
    _started = tracker
    _core.set_item_hooks(tracker._hooks if tracker is not None else None)
    if _item_patch is None:
        _item_patch = patches.PatchSet().apply([(torch.Tensor, "item", _item)])


def remove_item_hook(tracker: AlwaysOnTracker | None = None) -> None:
    global _started, _item_patch
    if _started is tracker:
        _started = None
        _core.set_item_hooks(None)
    ps, _item_patch = _item_patch, None
    if ps is not None:
        ps.restore()
