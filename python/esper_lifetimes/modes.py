"""Switching tracking on and off for a whole run: ``enable(mode=...)``, ``disable()``.

``mode="on"`` lets ``@checked`` and ``track()`` track (the default); ``"full"`` tracks
every op of the run; ``"always-on"`` samples windows of ops cheaply enough to leave on
in production training (:mod:`esper_lifetimes.always_on_tracker`); ``"off"`` turns everything
off. The spellings and options are those of ``ESPER_LIFETIMES``
(:mod:`esper_lifetimes.config`, the one parser of that grammar).
"""

from __future__ import annotations

import atexit
import threading
from typing import Any

from esper_lifetimes import config
from esper_lifetimes.always_on_tracker import (
    DEFAULT_MAX_WINDOW_OPS,
    DEFAULT_SAMPLE,
    AlwaysOnTracker,
)
from esper_lifetimes.tracking import ConfigError
from esper_lifetimes.tracking.policy import switch

__all__ = [
    "AlwaysOnTracker",
    "ConfigError",
    "DEFAULT_SAMPLE",
    "MODES",
    "enable",
    "disable",
    "always_on",
    "enable_from_env",
    "parse_env",
]

MODES = config.MODES

# ---------------------------------------------------------------------------------------
# The switch

_lock = threading.Lock()
_run: AlwaysOnTracker | None = None
_emulation: Any = None  # the entered esper_lifetimes.emulate.emulate_cuda(), or None
_UNSET: Any = object()


def _start_emulation() -> None:
    global _emulation
    if _emulation is not None:
        return
    try:
        from esper_lifetimes.emulate import emulate_cuda
    except ImportError as exc:
        raise ConfigError(
            f"emulate='cuda' needs esper_lifetimes.emulate, which this build lacks ({exc})"
        ) from None
    cm = emulate_cuda()
    cm.__enter__()
    _emulation = cm


def _stop_emulation() -> None:
    global _emulation
    cm, _emulation = _emulation, None
    if cm is not None:
        cm.__exit__(None, None, None)


def enable(
    mode: str | None = None,
    *,
    sample: float = _UNSET,
    seed: int | None = None,
    report: str | None = None,
    max_window_ops: int = _UNSET,
    timeline: Any = None,
    emulate: str | None = None,
) -> AlwaysOnTracker | None:
    """Switches tracking on.

    ``enable()`` (or ``mode="on"``) lets ``@checked`` and ``track()`` track again after
    :func:`disable`. ``enable(mode="always-on", sample=0.005, seed=None, report=None)`` also
    starts the always-on tracker on the calling thread for the rest of the run (or until
    :func:`disable`); ``mode="full"`` tracks every op instead. Returns the run's tracker
    (``None`` without a run-wide mode). Hazards are logged to the ``esper_lifetimes``
    logger and, with ``report=PATH``, appended to PATH as JSON Lines. ``timeline`` (a
    :class:`esper_lifetimes.reports.Timeline`) records the tracker's engine calls, for
    the Chrome trace and HTML reports. ``emulate="cuda"`` enters
    :func:`esper_lifetimes.emulate.emulate_cuda` until :func:`disable`.

    A bad value raises :class:`ConfigError` naming it, before anything changes. Mode
    spellings are those of ``ESPER_LIFETIMES`` (:mod:`esper_lifetimes.config`).
    """
    global _run
    opts: dict[str, Any] = {"seed": seed, "report": report, "emulate": emulate}
    if sample is not _UNSET:
        opts["sample"] = sample
    if max_window_ops is not _UNSET:
        opts["max_window_ops"] = max_window_ops
    try:
        m = None if mode is None else config.normalize_mode(mode, "enable()")
        if m not in ("full", "always-on"):
            # seed/report None are the defaults: only what was really given is checked
            opts = {k: v for k, v in opts.items() if v is not None}
        config.check_enable(m, opts)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if m == "off":
        disable()
        return None
    if emulate is not None:
        _start_emulation()
    switch.enabled = True
    if m is None or m == "on":
        return None
    tr = AlwaysOnTracker(
        m,
        sample=DEFAULT_SAMPLE if sample is _UNSET else sample,
        seed=seed,
        report=report,
        max_window_ops=DEFAULT_MAX_WINDOW_OPS if max_window_ops is _UNSET else max_window_ops,
        timeline=timeline,
    )
    with _lock:
        if _run is not None:
            _run.stop()
        tr.start()
        _run = tr
    return tr


def disable() -> None:
    """Switches tracking off: stops the run's tracker (if any) and a CUDA emulation that
    :func:`enable` entered; ``@checked`` calls the function directly and ``track()``
    records nothing until :func:`enable`."""
    global _run
    with _lock:
        run, _run = _run, None
    try:
        if run is not None:
            run.stop()
    finally:
        switch.enabled = False
        _stop_emulation()


def always_on() -> AlwaysOnTracker | None:
    """The run's tracker started by :func:`enable` (or ``ESPER_LIFETIMES``), or None."""
    return _run


@atexit.register
def _at_exit() -> None:
    run = _run
    if run is not None:
        try:
            run.stop()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def parse_env(value: str) -> tuple[str, dict[str, Any]]:
    """``"always-on,sample=0.02,report=/tmp/hz.jsonl"`` -> ``("always-on", {...})``
    (:func:`esper_lifetimes.config.parse`: raises ``ValueError`` naming what is wrong)."""
    return config.parse(value)


def enable_from_env(value: str) -> AlwaysOnTracker | None:
    """Applies an ``ESPER_LIFETIMES`` value (see :mod:`esper_lifetimes.config`). Raises
    on a bad value; the package's import uses :func:`config.from_env`, which does not."""
    mode, opts = config.parse(value)
    if mode == "off":
        disable()
        return None
    return enable(mode, **opts)
