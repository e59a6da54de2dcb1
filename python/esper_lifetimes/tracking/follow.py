"""What a region follows beyond its own thread's ops: threads started inside it, and
compiled code and CUDA graph replays.

Both are process-wide patches (``threading.Thread.start``, ``torch.compile``, dynamo's
stance hook, ``CUDAGraph.replay``), made through :class:`esper_lifetimes.patches.PatchSet`
while any region is attached and restored exactly when the last one detaches.
"""

from __future__ import annotations

import sys
import threading
from typing import TYPE_CHECKING, Any

import torch

from esper_lifetimes import patches
from esper_lifetimes.tracking.dispatch import Mode

if TYPE_CHECKING:
    from esper_lifetimes.tracking.tracker import Tracker

__all__ = ["follow_threads", "follow_compiled", "replace_stance"]

# ---------------------------------------------------------------------------------------
# Threads started inside a region

# The dispatch mode stack is per thread: a thread started while a region tracks every op
# of the starting thread (a plain Mode, not an always-on window) runs its target under
# that region too. threading.Thread.start is wrapped while any region is attached and
# restored when the last one detaches.
_thread_lock = threading.Lock()
_thread_users = 0
_thread_patch: patches.PatchSet | None = None


def follow_threads(delta: int) -> None:
    global _thread_users, _thread_patch
    with _thread_lock:
        before = _thread_users
        _thread_users = max(0, before + delta)
        if before == 0 and _thread_users > 0:
            orig = threading.Thread.start

            def start(self: threading.Thread) -> None:
                _wrap_run(self)
                return orig(self)

            start.__wrapped__ = orig  # type: ignore[attr-defined]
            start.__doc__ = orig.__doc__
            _thread_patch = patches.PatchSet().apply([(threading.Thread, "start", start)])
        elif before > 0 and _thread_users == 0 and _thread_patch is not None:
            _thread_patch.restore()
            _thread_patch = None


def _followers() -> list[Tracker]:
    st = patches.thread_state
    if st.depth or not st.active:
        return []
    out = []
    for tr, mode in zip(st.active, st.modes, strict=True):
        if type(mode) is Mode and not mode.suspended and tr.watching:
            out.append(tr)
    return out


def _wrap_run(th: threading.Thread) -> None:
    try:
        trs = _followers()
        if not trs or getattr(th, "_esper_followed", False):
            return
        run = th.run

        def run_followed() -> None:
            entered: list[Tracker] = []
            for tr in trs:
                try:
                    if tr._enter_thread():
                        entered.append(tr)
                except Exception as exc:
                    tr.note(exc, "thread start")
            try:
                run()
            finally:
                for tr in reversed(entered):
                    try:
                        tr._exit_thread()
                    except Exception as exc:
                        tr.note(exc, "thread end")

        th.run = run_followed  # type: ignore[method-assign]
        th._esper_followed = True  # type: ignore[attr-defined]
    except Exception:  # noqa: S110 - never break the program's thread start
        pass


# ---------------------------------------------------------------------------------------
# Compiled code and CUDA graphs inside a region

# A dispatch mode cannot see the kernels of a torch.compile'd function. While a region is
# attached, dynamo's stance is "force_eager": compiled functions run their Python eagerly,
# so that every op is tracked, and the report notes each such call. CUDA graph replays
# run captured kernels that no mode sees: each is counted as unseen work. Both restored
# when the last region detaches. Dynamo is not imported for this (it is slow to import):
# when it is not loaded yet, torch.compile is wrapped to apply the stance when called.
_compile_users = 0
_compile_patch: patches.PatchSet | None = None  # torch.compile, CUDAGraph.replay, dynamo's hook
_saved_stance: list[Any] = []  # dynamo's stance before the regions set "force_eager"
_EAGER_NOTE = "a torch.compile'd function ran eagerly, so that its ops were tracked"


def follow_compiled(delta: int) -> None:
    global _compile_users
    with _thread_lock:
        before = _compile_users
        _compile_users = max(0, before + delta)
        try:
            if before == 0 and _compile_users > 0:
                _compiled_on()
            elif before > 0 and _compile_users == 0:
                _compiled_off()
        except Exception:  # noqa: S110 - never break the region for this
            pass


def _compiled_on() -> None:
    global _compile_patch
    ps = _compile_patch = patches.PatchSet()
    graph = getattr(torch.cuda, "CUDAGraph", None)
    replay = getattr(graph, "replay", None) if graph is not None else None
    if replay is not None and "replay" in graph.__dict__:

        def replay_counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            _tell_all("_unseen", "CUDA graph replay")
            return replay(self, *args, **kwargs)

        replay_counted.__wrapped__ = replay  # type: ignore[attr-defined]
        ps.apply([(graph, "replay", replay_counted)])
    if sys.modules.get("torch._dynamo.eval_frame") is not None:
        _stance_on()
        return
    orig = torch.compile

    def compile(*args: Any, **kwargs: Any) -> Any:  # noqa: A001 - torch.compile's name
        out = orig(*args, **kwargs)
        with _thread_lock:
            if _compile_users and not _saved_stance:
                try:
                    _stance_on()
                except Exception:  # noqa: S110
                    pass
        return out

    compile.__wrapped__ = orig  # type: ignore[attr-defined]
    compile.__doc__ = orig.__doc__
    ps.apply([(torch, "compile", compile)])


def _stance_on() -> None:
    ef = sys.modules.get("torch._dynamo.eval_frame")
    if ef is None or _compile_patch is None:
        return
    _saved_stance[:] = [patches.dynamo_stance()]
    torch.compiler.set_stance("force_eager")
    cfs = ef._callback_from_stance

    def callback_from_stance(callback: Any) -> Any:
        if callback is not None and callback is not False:
            _tell_all("_notes", _EAGER_NOTE)  # one call of a compiled function
        return cfs(callback)

    _compile_patch.apply([(ef, "_callback_from_stance", callback_from_stance)])


def _compiled_off() -> None:
    global _compile_patch
    ps, _compile_patch = _compile_patch, None
    if ps is not None:
        ps.restore()
    if _saved_stance:
        patches.restore_dynamo_stance(_saved_stance[0])
    _saved_stance.clear()


def _tell_all(table: str, what: str) -> None:
    """Counts ``what`` at the user's line for every tracker watching this thread."""
    st = patches.thread_state
    if st.depth or not st.active:
        return
    for tr in patches.targets(st.active):
        if tr.watching:
            tr._count(getattr(tr, table), what, 3)


def replace_stance(installed: Any, before: Any) -> None:
    """CUDA emulation, which set dynamo's stance ``installed`` before a region set its
    own, stops: the stance the regions restore is ``before``."""
    if _saved_stance and _saved_stance[0] is installed:
        _saved_stance[0] = before
