"""The one parser of ``ESPER_LIFETIMES`` and of the values :func:`esper_lifetimes.enable`
takes.

Imports neither torch nor the compiled engine: the package reads the variable at import
(``import esper_lifetimes`` stays cheap), and so does the pytest plugin.

Grammar: ``MODE[,KEY=VALUE]...``, case-insensitive, spaces ignored.

==============  ==========================================================================
MODE            meaning
==============  ==========================================================================
(unset, empty)  the default: ``track()`` and ``@checked`` track; no run-wide tracker
``on``          the same, said explicitly; also ``1``, ``true``, ``yes``, ``enable``,
                ``enabled``
``off``         nothing is tracked (``@checked`` calls the function directly, ``track()``
                records nothing); also ``0``, ``false``, ``no``, ``disable``,
                ``disabled``, ``none``
``full``        a run-wide tracker that tracks every op of the importing thread
``always-on``   a run-wide tracker that samples windows of ops (also ``always_on``)
==============  ==========================================================================

Options (``full`` and ``always-on`` only, except ``emulate``): ``sample=P`` (a probability
in [0, 1]), ``seed=N``, ``report=PATH`` (JSON Lines, appended), ``max_window_ops=N``
(``max-window-ops`` too), ``emulate=cuda`` (runs CUDA stream code on virtual streams,
:mod:`esper_lifetimes.emulate`; any mode but ``off``).

A bad value never breaks the program at import: :func:`from_env` warns once
(:class:`ConfigWarning`, with the accepted values) and tracking stays off. From the API,
:func:`check_enable` raises :class:`ValueError` naming the value (``modes.enable`` turns it
into :class:`esper_lifetimes.ConfigError`, a ``LifetimesError``).
"""

from __future__ import annotations

import numbers
import os
import threading
import warnings
from typing import Any

__all__ = [
    "MODES",
    "ConfigWarning",
    "accepted",
    "check_enable",
    "enabled_by_env",
    "from_env",
    "normalize_mode",
    "parse",
]

VAR = "ESPER_LIFETIMES"
MODES = ("off", "on", "full", "always-on")
_OFF = frozenset({"off", "0", "false", "no", "n", "disable", "disabled", "none"})
_ON = frozenset({"on", "1", "true", "yes", "y", "enable", "enabled"})
_ALIASES = {"always_on": "always-on", "alwayson": "always-on", "always": "always-on"}
_RUN_MODES = ("full", "always-on")
OPTIONS = ("sample", "seed", "report", "max_window_ops", "emulate")
EMULATE = ("cuda",)


class ConfigWarning(UserWarning):
    """``ESPER_LIFETIMES`` holds a value that is not understood: tracking stays off."""


def accepted() -> str:
    """The accepted values, for messages."""
    return (
        "accepted: off (or 0/false/no/disable/disabled), on (or 1/true/yes/enable/enabled), "
        "full, always-on; options for full and always-on: sample=P (0..1), seed=N, "
        "report=PATH, max_window_ops=N; emulate=cuda with any mode but off"
    )


def normalize_mode(value: Any, where: str = VAR) -> str:
    """``"Always-On"`` -> ``"always-on"``, ``"1"`` -> ``"on"``, ``"disabled"`` -> ``"off"``."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: mode must be a string ({', '.join(MODES)}), not {value!r}")
    m = value.strip().lower()
    m = _ALIASES.get(m, m)
    if m in _OFF:
        return "off"
    if m in _ON:
        return "on"
    if m in MODES:
        return m
    raise ValueError(f"{where}: mode must be one of {', '.join(MODES)}, not {value!r}")


def _opt_from_text(key: str, raw: str) -> Any:
    raw = raw.strip()
    if key == "sample":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{VAR}: option sample takes a float, got {raw!r}") from None
    if key in ("seed", "max_window_ops"):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"{VAR}: option {key} takes an int, got {raw!r}") from None
    if key == "emulate":
        return raw.lower()
    return raw  # report


def parse(value: str) -> tuple[str, dict[str, Any]]:
    """``"always-on,sample=0.02,report=/tmp/hz.jsonl"`` -> ``("always-on", {...})``.

    An empty value is ``("on", {})``: the default. Raises :class:`ValueError` naming what
    is wrong (the values are checked as :func:`check_enable` checks the API's)."""
    items = [p.strip() for p in value.split(",") if p.strip()]
    if not items:
        return "on", {}
    mode = normalize_mode(items[0])
    if mode == "off":
        return "off", {}  # off is off, whatever follows
    opts: dict[str, Any] = {}
    for item in items[1:]:
        key, sep, raw = item.partition("=")
        key = key.strip().lower().replace("-", "_")
        if not sep or key not in OPTIONS:
            raise ValueError(
                f"{VAR}: unknown option {item!r} (options: {', '.join(k + '=' for k in OPTIONS)})"
            )
        opts[key] = _opt_from_text(key, raw)
    check_enable(mode, opts, where=VAR)
    return mode, opts


def check_enable(mode: str | None, opts: dict[str, Any], where: str = "enable()") -> None:
    """Checks the values of ``enable(mode, **opts)``; raises :class:`ValueError` naming
    the value."""
    run = mode in _RUN_MODES
    for key, val in opts.items():
        if key == "emulate":
            if val is None:
                continue
            if not isinstance(val, str) or val.strip().lower() not in EMULATE:
                raise ValueError(
                    f"{where}: emulate must be one of {', '.join(EMULATE)}, not {val!r}"
                )
            if mode == "off":
                raise ValueError(f"{where}: emulate={val} needs tracking on, not mode off")
            continue
        if key not in OPTIONS:
            raise ValueError(f"{where}: unknown option {key!r}")
        if val is None:
            if key in ("seed", "report"):
                continue
            raise ValueError(f"{where}: {key} must not be None")
        if not run:
            raise ValueError(
                f"{where}: {key}={val!r} applies to a run-wide tracker: give mode 'full' "
                f"or 'always-on', not {mode!r}"
            )
        if key == "sample":
            if isinstance(val, bool) or not isinstance(val, numbers.Real):
                raise ValueError(f"{where}: sample must be a number in [0, 1], not {val!r}")
            if not 0.0 <= float(val) <= 1.0:
                raise ValueError(f"{where}: sample must be a probability in [0, 1], not {val!r}")
        elif key in ("seed", "max_window_ops"):
            if isinstance(val, bool) or not isinstance(val, numbers.Integral):
                raise ValueError(f"{where}: {key} must be an int, not {val!r}")
            if key == "max_window_ops" and val < 1:
                raise ValueError(f"{where}: max_window_ops must be positive, not {val!r}")
        elif key == "report":
            if not isinstance(val, str | os.PathLike) or not os.fspath(val):
                raise ValueError(f"{where}: report must be a file path, not {val!r}")


# ---------------------------------------------------------------------------------------
# The environment, read once per value

_lock = threading.Lock()
_cache: dict[str, tuple[str, dict[str, Any]] | None] = {}
_warned: set[str] = set()


def warn_once(key: str, text: str) -> None:
    """One :class:`ConfigWarning` per ``key`` for the whole process."""
    with _lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(text, ConfigWarning, stacklevel=3)


def from_env(environ: Any = None) -> tuple[str, dict[str, Any]] | None:
    """The parsed ``ESPER_LIFETIMES``: ``None`` when unset or empty; ``("off", {})``, after
    one warning, when the value is not understood. Never raises."""
    value = (os.environ if environ is None else environ).get(VAR, "")
    if not value.strip():
        return None
    with _lock:
        if value in _cache:
            return _cache[value]
    try:
        result: tuple[str, dict[str, Any]] | None = parse(value)
    except Exception as exc:
        result = ("off", {})
        warn_once(value, f"{exc}; tracking stays off ({accepted()})")
    with _lock:
        _cache[value] = result
    return result


def env_failed(value: str, exc: BaseException) -> None:
    """Starting what ``ESPER_LIFETIMES`` asked for failed (an unwritable report path):
    warn once; the caller switches tracking off."""
    warn_once(
        "start:" + value,
        f"{VAR}={value!r} could not start: {type(exc).__name__}: {exc}; tracking stays "
        f"off ({accepted()})",
    )
    with _lock:
        _cache[value] = ("off", {})


def enabled_by_env() -> bool:
    """Whether ``track()`` and ``@checked`` track by default (not ``off``, not invalid)."""
    s = from_env()
    return s is None or s[0] != "off"
