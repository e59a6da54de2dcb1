"""``@checked``: full tracking for the duration of each call, with one tracker shared by
every call (so that storages registered in one call have their frees judged in a later
one), and :func:`flush_checked`, the safe point asked for.

Generator, coroutine and async-generator bodies are tracked across their suspensions:
each resumption is one checked call.
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
from collections.abc import Callable
from typing import Any, TypeVar

from esper_lifetimes import Hazard, patches
from esper_lifetimes.tracking.policy import COLLECT, Switch, parse_policy, switch
from esper_lifetimes.tracking.tracker import Tracker

__all__ = ["checked", "checked_tracker", "reset_checked", "flush_checked"]

F = TypeVar("F", bound=Callable[..., Any])

_checked: Tracker | None = None
_checked_lock = threading.Lock()
_exit_registered = False


def _register_exit() -> None:
    global _exit_registered
    if not _exit_registered:
        _exit_registered = True
        import atexit

        atexit.register(_checked_at_exit)


def checked_tracker() -> Tracker:
    """The tracker shared by every ``@checked`` call (created on first use)."""
    global _checked
    tr = _checked
    if tr is None:
        with _checked_lock:
            tr = _checked
            if tr is None:
                tr = Tracker("raise")
                tr._shared = True
                tr._start()
                tr._state = "shared"
                _checked = tr
                _register_exit()
                patches.install_signal_guard()
    return tr


def reset_checked() -> None:
    """Forgets the shared ``@checked`` tracker and everything it watched (hazards not yet
    reported included: call :func:`flush_checked` first to have them)."""
    global _checked
    with _checked_lock:
        tr, _checked = _checked, None
    if tr is not None:
        tr._close()


def flush_checked() -> list[Hazard]:
    """A safe point for the ``@checked`` tracker, asked for: the engine takes its verdict
    on every pending free now (``Engine.flush()``), and the errors not yet reported go
    through the policy of the calls that registered their storages (``raise``:
    :class:`LifetimeHazardError`, ``warn``: a warning). Returns those errors (also under
    ``collect``). At interpreter exit the same happens, with what would be raised logged
    instead (logger ``esper_lifetimes``, ERROR, with the report)."""
    tr = _checked
    if tr is None or tr._eng is None:
        return []
    if patches.thread_state.active:
        raise RuntimeError("flush_checked() inside a tracked region or @checked call")
    before = tr._seen
    tr.flush()
    errors = [h for h in tr._eng.hazards(before) if h.severity == "error"]
    tls = tr._tls
    tls.policy = COLLECT  # the storages' own policies decide
    try:
        tr.safe_point()
    finally:
        tls.policy = None
    return errors


class _ExitReport(Exception):
    """Collects, as notes, the report of what a ``raise`` policy finds at exit."""


def _checked_at_exit() -> None:
    tr = _checked
    if tr is None or tr._eng is None:
        return
    try:
        tr.flush()
        sink = _ExitReport()
        tls = tr._tls
        tls.policy = COLLECT
        try:
            tr.safe_point(exc=sink)
        finally:
            tls.policy = None
        notes = getattr(sink, "__notes__", None)
        if notes:
            import logging

            logging.getLogger("esper_lifetimes").error(
                "hazards found after the last @checked call (reported at exit):\n%s",
                "\n".join(notes),
            )
    except Exception:  # pragma: no cover - interpreter shutdown
        pass


def _call_checked(f: Callable[..., Any], policy: int, args: tuple, kwargs: dict) -> Any:
    if patches.thread_state.active:
        return f(*args, **kwargs)  # this thread is already tracked
    tr = checked_tracker()
    tls = tr._tls
    tls.policy = policy
    try:
        tr._attach()
        try:
            tr.safe_point()  # hazards found since the last call (late frees)
            result = f(*args, **kwargs)
        except (StopIteration, StopAsyncIteration):
            # one step of a generator or coroutine body (_checked_step) that finished:
            # its normal end, where a hazard raises
            tr._detach()
            tr.safe_point()
            raise
        except BaseException as exc:
            tr._detach()
            tr.safe_point(exc=exc)
            raise
        tr._detach()
        tr.safe_point()
        return result
    finally:
        tls.policy = None


# One resumption of a generator or coroutine body (send, throw, close) is one checked call:
# the body is tracked across its suspensions, and what runs between them (the consumer,
# the event loop, other tasks) is not.


def _drive(it: Any, policy: int) -> Any:
    """The generator that runs generator or awaitable ``it`` one checked step at a time
    and returns (``StopIteration.value``) what ``it`` returns."""
    send: Any = None
    thrown: BaseException | None = None
    while True:
        try:
            if thrown is None:
                item = _call_checked(it.send, policy, (send,), {})
            else:
                exc, thrown = thrown, None
                item = _call_checked(it.throw, policy, (exc,), {})
        except StopIteration as stop:
            return stop.value
        try:
            send = yield item
        except GeneratorExit:
            close = getattr(it, "close", None)
            if close is not None:
                _call_checked(close, policy, (), {})
            raise
        except BaseException as exc:
            thrown = exc


_drive_awaitable = types.coroutine(_drive)


def _checked_wrapper(f: Any, policy: int, cfg: Switch) -> Any:
    if inspect.isasyncgenfunction(f):

        @functools.wraps(f)
        async def agen_wrapper(*args: Any, **kwargs: Any) -> Any:
            agen = f(*args, **kwargs)
            if not cfg.enabled:
                async for item in agen:  # noqa: UP028 - asend/athrow are not needed off
                    yield item
                return
            send: Any = None
            thrown: BaseException | None = None
            while True:
                try:
                    if thrown is None:
                        item = await _drive_awaitable(agen.asend(send), policy)
                    else:
                        exc, thrown = thrown, None
                        item = await _drive_awaitable(agen.athrow(exc), policy)
                except StopAsyncIteration:
                    return
                try:
                    send = yield item
                except GeneratorExit:
                    await _drive_awaitable(agen.aclose(), policy)
                    raise
                except BaseException as exc:
                    thrown = exc

        return agen_wrapper
    if inspect.iscoroutinefunction(f):

        @functools.wraps(f)
        async def coro_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not cfg.enabled:
                return await f(*args, **kwargs)
            return await _drive_awaitable(f(*args, **kwargs), policy)

        return coro_wrapper
    if inspect.isgeneratorfunction(f):

        @functools.wraps(f)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Any:
            if not cfg.enabled:
                return (yield from f(*args, **kwargs))
            return (yield from _drive(f(*args, **kwargs), policy))

        return gen_wrapper

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not cfg.enabled:
            return f(*args, **kwargs)
        return _call_checked(f, policy, args, kwargs)

    return wrapper


def checked(fn: F | None = None, *, on_hazard: str = "raise") -> Any:
    """Decorator: full tracking for the duration of each call.

    Storages registered during a call stay watched until freed, also after the call
    returns; hazards found later go through this policy at the next safe point (the next
    ``@checked`` call, :func:`flush_checked`, or at the latest interpreter exit). With
    tracking disabled the wrapper costs one attribute check.

    A generator function, ``async def`` or async generator is tracked across its
    suspensions: each resumption of its body is one checked call (the wrapper is of the
    same kind, so ``inspect`` still says what it is). Above ``@classmethod`` or
    ``@staticmethod`` it wraps the function inside and keeps the descriptor; anything
    else that is not callable is a ``TypeError`` at decoration.
    """
    policy = parse_policy(on_hazard)
    cfg = switch

    def deco(f: F) -> F:
        if isinstance(f, classmethod | staticmethod):
            inner = deco(f.__func__)
            return type(f)(inner)  # type: ignore[return-value]
        if not callable(f):
            raise TypeError(f"@checked needs a function (or a classmethod/staticmethod), not {f!r}")
        wrapper = _checked_wrapper(f, policy, cfg)
        wrapper.__esper_checked__ = True
        return wrapper  # type: ignore[no-any-return]

    if fn is not None:
        return deco(fn)
    return deco
