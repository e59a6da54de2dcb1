"""Automatic tracking of real torch code: ``track()``, ``@checked``, the dispatch mode.

One :class:`Tracker` owns one engine. While it is active on a thread:

* a ``TorchDispatchMode`` sees every aten op. Per op: one plan (cached per
  ``OpOverload``, built from the schema) says which arguments are read, which are
  written (``Tensor(a!)``), which are view inputs that touch no bytes (``Tensor(a)``)
  and which returns are fresh storages. Each tensor becomes one engine call over the
  bytes its view spans within its storage (storage offset, sizes, strides).
* a storage is registered the first time it is seen: as a fresh output, with the
  stream current at its creation as allocation stream and the op's site; as an input
  that the tracker never saw created (it existed before tracking began, or torch built it
  without dispatching, as ``torch.from_numpy`` does), lazily, on the *default* stream
  with no site ("allocated before tracking").
* its free is seen by a ``weakref`` callback on ``tensor.untyped_storage()`` (the same
  Python object for every view, alive exactly as long as the storage), and by the
  patched ``UntypedStorage.resize_``. The callback never raises: hazards it finds are
  reported at the next safe point.
* stream, event and host-blocking calls are patched (:mod:`esper_lifetimes.patches`).

Which memory is which. A CUDA tensor is device memory on its device's current stream.
A CPU tensor is *host* memory when it is pinned (``pin_memory()``, ``pin_memory=True``,
the output of a non-blocking device-to-host copy, or :func:`virtual.pin_memory`);
otherwise, with ``cpu="device"`` (the default when no GPU is present), it stands for
device memory on the current *virtual* stream, and with ``cpu="host"`` (the default with
a GPU) it is host memory that only copies and host reads care about.

Raising is deferred to safe points: after each op, in patched calls, on exit (and at the
entry and exit of ``@checked`` calls). Internal failures (the engine rejecting an event
the tracker built from something torch did that it did not foresee) never reach the
user's program: they are counted in :attr:`Tracker.diagnostics`.

The package has one file per job: :mod:`.tracker` assembles :class:`Tracker` from
:mod:`.region` (region and policy), :mod:`.storages` (registration, accesses, frees),
:mod:`.copies` (host/device copies), :mod:`.apply` (ops that need more than their schema)
and :mod:`.hooks` (events from patched calls); :mod:`.dispatch` is the per-op hot path,
:mod:`.plans` reads op schemas, :mod:`.memory` says which memory a storage is,
:mod:`.policy` holds the errors and the on/off switch, :mod:`.follow` follows threads and
compiled code, :mod:`.checked` is ``@checked``. Switching tracking on and off is
:func:`esper_lifetimes.enable` and :func:`esper_lifetimes.disable`.
"""

from __future__ import annotations

from esper_lifetimes.reports.text import format_report
from esper_lifetimes.tracking.checked import checked, checked_tracker, flush_checked, reset_checked
from esper_lifetimes.tracking.policy import (
    ConfigError,
    LifetimeHazardError,
    LifetimeHazardWarning,
    is_enabled,
)
from esper_lifetimes.tracking.tracker import Tracker, track

__all__ = [
    "Tracker",
    "track",
    "checked",
    "checked_tracker",
    "reset_checked",
    "flush_checked",
    "is_enabled",
    "ConfigError",
    "LifetimeHazardError",
    "LifetimeHazardWarning",
    "format_report",
]
