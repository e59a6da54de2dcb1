"""Tracking must not change what autocast computes (issue 10, item 19).

The cause, measured with a plain no-op ``TorchDispatchMode`` as well as the tracker's:
under ``torch.inference_mode()`` the autograd keys are excluded, so an op with a
``CompositeImplicitAutograd`` kernel (``lstm``, ``einsum``, ``tensordot``, ``inner``,
``linalg.multi_dot``, ...) is not decomposed at the autograd key: it reaches the Python
key (any dispatch mode) whole. A mode's ``func(*args)`` then runs the decomposition below
the Python key, where torch excludes every key above it, autocast's included: the
sub-ops (``bmm``, ``mm``, ``_cudnn_rnn``) run in float32 while tracked, in bf16 untracked.
Without inference mode (plain or ``no_grad``) the decomposition happens above autocast
and nothing changes.

The tracker avoids it: while autocast is on outside the mode (as the thread's dispatch
key state says, read where a region starts and at each ``autocast`` enter and exit), a
composite op that reaches the mode is decomposed there (``func.decompose``) with the
autocast keys that were on outside included again, inside the mode: its sub-ops are
cast as untracked, and tracked one by one. The results are the same tracked and untracked
(``tests/test_autocast.py``).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

__all__ = ["note_outer", "run"]

_DK = torch._C.DispatchKey
AUTOCAST_KEYS = tuple(
    getattr(_DK, n)
    for n in (
        "AutocastCPU",
        "AutocastCUDA",
        "AutocastXPU",
        "AutocastMPS",
        "AutocastHPU",
        "AutocastXLA",
        "AutocastIPU",
        "AutocastMTIA",
        "AutocastMAIA",
        "AutocastPrivateUse1",
    )
    if hasattr(_DK, n)
)
NONE: Any = object()  # run()'s "not handled"


class _State(threading.local):
    def __init__(self) -> None:
        self.outer: Any = None  # the thread's exclude set outside the mode, autocast on


_state = _State()
# True once autocast was seen on while tracking (a cheap global check on the op path).
active = False
# id(OpOverload) -> (op, has a CompositeImplicitAutograd kernel); the op pins its id
_composite: dict[int, tuple[Any, bool]] = {}


def note_outer() -> None:
    """Records the thread's dispatch key state outside any mode (a region starts, an
    ``autocast`` is entered or left): which autocast keys are on."""
    global active
    try:
        exc = torch._C._dispatch_tls_local_exclude_set()
    except Exception:  # pragma: no cover - a torch without it
        return
    on = any(not exc.has(k) for k in AUTOCAST_KEYS)
    _state.outer = exc if on else None
    if on:
        active = True


def run(mode: Any, func: Any, args: tuple, kwargs: dict) -> Any:
    """Inside ``mode.__torch_dispatch__``: ``func``'s result computed as untracked code
    would under the autocast that is on outside, or :data:`NONE` (nothing to do)."""
    outer = _state.outer
    if outer is None:
        return NONE
    entry = _composite.get(id(func))
    if entry is None:
        try:
            c = torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), "CompositeImplicitAutograd"
            )
        except Exception:
            c = False
        entry = _composite[id(func)] = (func, bool(c))
    if not entry[1]:
        return NONE
    inc = torch._C._dispatch_tls_local_include_set()
    exc = torch._C._dispatch_tls_local_exclude_set()
    new = exc
    for k in AUTOCAST_KEYS:
        if new.has(k) and not outer.has(k):
            new = new.remove(k)
    if new == exc:
        return NONE
    with torch._C._ForceDispatchKeyGuard(inc, new), mode:
        out = func.decompose(*args, **kwargs)
    return NONE if out is NotImplemented else out


def make_enter(orig: Any) -> Any:
    def __enter__(self: Any) -> Any:
        result = orig(self)
        note_outer()
        return result

    __enter__.__wrapped__ = orig  # type: ignore[attr-defined]
    return __enter__


def make_exit(orig: Any) -> Any:
    def __exit__(self: Any, *exc_info: Any) -> Any:
        result = orig(self, *exc_info)
        note_outer()
        return result

    __exit__.__wrapped__ = orig  # type: ignore[attr-defined]
    return __exit__
