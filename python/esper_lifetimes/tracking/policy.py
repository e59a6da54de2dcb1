"""What a tracker does with the errors it finds: the policies (``raise``, ``warn``,
``collect``), the errors and warnings they produce, and the on/off switch.

Raising waits for a safe point, never a finalizer (:func:`in_finalizer`): Python
swallows what a ``__del__`` or weakref callback raises.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

from esper_lifetimes import Hazard, InvalidArgumentError
from esper_lifetimes.sites import user_frame

__all__ = [
    "LifetimeHazardError",
    "LifetimeHazardWarning",
    "ConfigError",
    "COLLECT",
    "WARN",
    "RAISE",
    "parse_policy",
    "switch",
    "is_enabled",
    "in_finalizer",
    "warn_hazards",
]

_getframe = sys._getframe


class LifetimeHazardError(RuntimeError):
    """An error-severity hazard found under ``on_hazard="raise"``.

    The message is the report; :attr:`hazards` holds the :class:`Hazard` objects.
    """

    def __init__(self, message: str, hazards: list[Hazard]):
        super().__init__(message)
        self.hazards = hazards

    def __reduce__(self) -> tuple[Any, tuple[str, list[Hazard]]]:
        # pickles whole (a multiprocessing worker's error reaches the parent with its
        # hazards; Hazard pickles as its fields)
        return (type(self), (str(self), list(self.hazards)))


class LifetimeHazardWarning(RuntimeWarning):
    """An error-severity hazard found under ``on_hazard="warn"``."""


COLLECT, WARN, RAISE = 0, 1, 2
POLICIES = {"collect": COLLECT, "warn": WARN, "raise": RAISE}


class ConfigError(InvalidArgumentError, ValueError):
    """A bad value given to :func:`esper_lifetimes.enable`, :func:`track`,
    :func:`checked` (or :class:`AlwaysOnTracker`): the message names it. A
    :class:`esper_lifetimes.LifetimesError` (and a ``ValueError``)."""


def parse_policy(on_hazard: str) -> int:
    try:
        return POLICIES[on_hazard]
    except (KeyError, TypeError):
        raise ConfigError(
            f"on_hazard must be 'raise', 'warn' or 'collect', not {on_hazard!r}"
        ) from None


class Switch:
    """Whether tracking is on: the one flag ``@checked``, ``track()`` and
    :func:`esper_lifetimes.enable`/:func:`~esper_lifetimes.disable` share."""

    __slots__ = ("enabled",)

    def __init__(self) -> None:
        # ESPER_LIFETIMES: one parser (config.py); off, or a value not understood, is off
        from esper_lifetimes import config

        self.enabled = config.enabled_by_env()


switch = Switch()


def is_enabled() -> bool:
    """Whether ``@checked`` and ``track()`` track (:func:`esper_lifetimes.enable` and
    :func:`esper_lifetimes.disable` switch it; ``ESPER_LIFETIMES=off`` starts it off)."""
    return switch.enabled


def in_finalizer() -> bool:
    """Whether a finalizer (``__del__``, a ``weakref.finalize`` or weakref callback) is
    on the stack: never a safe point, as Python swallows what it raises."""
    try:
        f: Any = _getframe(2)
    except ValueError:
        return False
    while f is not None:
        code = f.f_code
        if code.co_name == "__del__":
            return True
        if code.co_name == "__call__" and code.co_filename.endswith("weakref.py"):
            return True
        f = f.f_back
    return False


def warn_hazards(text: str) -> None:
    """A :class:`LifetimeHazardWarning` with ``text``, attributed to the user's line."""
    f = user_frame(2)
    if f is None:
        warnings.warn(text, LifetimeHazardWarning, stacklevel=3)
        return
    g = f.f_globals
    warnings.warn_explicit(
        text,
        LifetimeHazardWarning,
        f.f_code.co_filename,
        f.f_lineno,
        module=g.get("__name__", "__main__"),
        registry=g.setdefault("__warningregistry__", {}),
    )
