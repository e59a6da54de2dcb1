"""esper-lifetimes: finds CUDA stream lifetime hazards in PyTorch programs at run time.

The engine (`Engine`, `Hazard`) is the Rust happens-before core (docs/ENGINE-API.md); the
torch side is `track()`, `@checked`, `virtual` streams and the always-on mode
(`enable(mode="always-on")`), see README.md.

Names are loaded on first use (PEP 562), so that ``import esper_lifetimes`` (and the
pytest plugin, which lives in this package) imports neither torch nor the compiled
engine until something asks for them. The environment variable ``ESPER_LIFETIMES``
(``off``, ``on``, ``full``, ``always-on``, with options; :mod:`esper_lifetimes.config`)
is read when the package is imported; a value not understood is a warning, never an
error.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # the engine
    "Engine": "esper_lifetimes._core",
    "Hazard": "esper_lifetimes._core",
    "LifetimesError": "esper_lifetimes._core",
    "InvalidArgumentError": "esper_lifetimes._core",
    "UnknownStorageError": "esper_lifetimes._core",
    # the torch side
    "LifetimeHazardError": "esper_lifetimes.tracking",
    "LifetimeHazardWarning": "esper_lifetimes.tracking",
    "Tracker": "esper_lifetimes.tracking",
    "checked": "esper_lifetimes.tracking",
    "checked_tracker": "esper_lifetimes.tracking",
    "is_enabled": "esper_lifetimes.tracking",
    "reset_checked": "esper_lifetimes.tracking",
    "flush_checked": "esper_lifetimes.tracking",
    "track": "esper_lifetimes.tracking",
    # switching on and off, the always-on mode
    "ConfigError": "esper_lifetimes.tracking",
    "ConfigWarning": "esper_lifetimes.config",
    "enable": "esper_lifetimes.modes",
    "disable": "esper_lifetimes.modes",
    "always_on": "esper_lifetimes.modes",
    "AlwaysOnTracker": "esper_lifetimes.always_on_tracker",
    # CUDA code on a CPU-only machine
    "emulate_cuda": "esper_lifetimes.emulate",
    "EmulationError": "esper_lifetimes.emulate",
}
_SUBMODULES = (
    "ops",
    "virtual",
    "trace",
    "reports",
    "tracking",
    "modes",
    "always_on_tracker",
    "patches",
    "config",
    "emulate",
)

__all__ = sorted([*_EXPORTS, *_SUBMODULES])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"esper_lifetimes.{name}")
    else:
        raise AttributeError(f"module 'esper_lifetimes' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


def _apply_env() -> None:
    """Applies ``ESPER_LIFETIMES`` (:mod:`esper_lifetimes.config`). Never raises: a value
    not understood, or one that cannot start (an unwritable ``report=``), is one
    :class:`ConfigWarning` naming the accepted values, and tracking stays off."""
    from esper_lifetimes import config

    settings = config.from_env()
    if settings is None:
        return
    mode, opts = settings
    if mode == "off" or (mode == "on" and not opts):
        return  # tracking's switch reads the same parse: nothing to start
    value = os.environ.get(config.VAR, "")
    try:
        importlib.import_module("esper_lifetimes.modes").enable(mode, **opts)
    except Exception as exc:
        config.env_failed(value, exc)
        try:
            importlib.import_module("esper_lifetimes.modes").disable()
        except Exception:  # pragma: no cover - torch itself fails to import
            pass


_apply_env()
