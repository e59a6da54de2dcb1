"""Which memory a storage is, and the tracker's record of it.

A storage is *virtual* device memory (a CPU tensor standing for device memory on a
virtual stream), *CUDA* device memory, or *host* memory (pinned, or marked with
:func:`esper_lifetimes.virtual.pin_memory`). :class:`Ref` is both the weakref whose
callback reports the storage's free and the record of its bytes, allocation stream and
uses. The stream helpers give the engine handle of the stream an op runs on.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch

from esper_lifetimes import patches, virtual

__all__ = [
    "VIRTUAL",
    "CUDA",
    "HOST",
    "Ref",
    "span",
    "vstate",
    "VDEFAULT",
    "host_marks",
    "emulating",
    "set_emulating",
    "emu_host",
    "vcurrent",
    "cuda_current",
    "cuda_default",
]

VIRTUAL, CUDA, HOST = 0, 1, 2


class Ref(weakref.ref):  # type: ignore[type-arg]
    """A weakref to an ``UntypedStorage`` that is also the tracker's record of it."""

    __slots__ = (
        "key",
        "ptr",
        "nbytes",
        "kind",
        "registered",
        "astream",
        "multi",
        "pinned",
        "pending",
        "policy",
    )

    key: int
    ptr: int
    nbytes: int
    kind: int
    registered: bool  # allocated in the engine (device memory)
    astream: int  # allocation stream
    multi: bool  # used on another stream, or record_stream'd: its free needs a site
    pinned: bool  # host memory that non-blocking copies run against
    pending: bool  # host memory that a non-blocking copy touched
    policy: int


def span(t: torch.Tensor) -> int:
    """Bytes from the view's first element to one past its last, within its storage."""
    if t.is_contiguous():
        return t.nbytes
    if not t.numel():
        return 0
    ext = 1
    for s, st in zip(t.shape, t.stride(), strict=True):
        if s > 1:
            ext += (s - 1) * st
    return ext * t.element_size()


vstate = virtual.state  # the current virtual stream, per thread
VDEFAULT = virtual.DEFAULT
host_marks = virtual.host_storages  # id(storage) of CPU memory marked as host memory
# CUDA emulation (esper_lifetimes.emulate) sets this while it runs: a CPU storage is then
# emulated device memory when it carries the ``_esper_cuda`` tag, host memory otherwise.
emulating = False


def emu_host(st: Any) -> bool:
    """Under CUDA emulation, whether CPU storage ``st`` is host memory (untagged)."""
    return emulating and getattr(st, "_esper_cuda", None) is None


def set_emulating(on: bool) -> None:
    """Called by :mod:`esper_lifetimes.emulate` as CUDA emulation starts and stops."""
    global emulating
    emulating = on
    for h in patches.hook_sets:  # the always-on trackers' compiled hooks
        h.emulating = on


def vcurrent() -> int:
    """The handle of the current virtual stream."""
    vs = vstate.cur.stream
    return (vs if vs is not None else VDEFAULT).handle


def cuda_current(device: int) -> int:
    """The engine handle of ``device``'s current CUDA stream."""
    sid, didx, _ = torch._C._cuda_getCurrentStream(device)
    return patches.cuda_stream_handle(sid, didx)


def cuda_default(device: int) -> int:
    """The engine handle of ``device``'s default CUDA stream."""
    sid, didx, _ = torch._C._cuda_getDefaultStream(device)
    return patches.cuda_stream_handle(sid, didx)
