"""The fix of one hazard, naming the real tensor and stream where they are known.

``fix_for(hazard)`` (a :class:`esper_lifetimes.Hazard`, or its ``to_dict()``) returns the
"fix:" line the text reports show (:data:`esper_lifetimes.reports.text.FixFor`), or
``None`` when nothing is known beyond the kind's general hint. The stream is the name the
engine gives it (a virtual stream's own name, ``cuda:0 stream 0x3``); the tensor is the
name the source line gives it: the target of the statement that freed it (``override =
torch.full(...)`` rebinding it, ``del x``) or that allocated it (``x = torch.randn(N)``).
When no name can be read, the tensor is the one allocated at its source line.

Imports neither torch nor the engine.
"""

from __future__ import annotations

import linecache
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["fix_for", "tensor_name"]

_NAME = r"[A-Za-z_][A-Za-z_0-9]*(?:\.[A-Za-z_][A-Za-z_0-9]*)*(?:\[[^\]=]*\])?"
_ASSIGN = re.compile(rf"^\s*({_NAME})\s*(?::[^=]*)?=(?!=)")
_DEL = re.compile(rf"^\s*del\s+({_NAME})\s*(?:#.*)?$")
_RECORD = re.compile(rf"({_NAME})\s*\.\s*record_stream\s*\(")


def _source(site: str | None) -> str:
    if not site:
        return ""
    path, sep, line = site.rpartition(":")
    if not sep or not line.isdigit():
        return ""
    text = linecache.getline(path, int(line))
    if not text and not os.path.isabs(path):
        text = linecache.getline(os.path.abspath(path), int(line))
    return text


def tensor_name(d: Mapping[str, Any]) -> str | None:
    """The tensor's name in the user's code, from the free's or the allocation's line."""
    for field, pattern in (("free_site", _DEL), ("free_site", _ASSIGN), ("alloc_site", _ASSIGN)):
        m = pattern.match(_source(d.get(field)))
        if m:
            return m.group(1)
    return None


def _as_dict(hazard: Any) -> Mapping[str, Any]:
    if isinstance(hazard, Mapping):
        return hazard
    to_dict = getattr(hazard, "to_dict", None)
    return to_dict() if to_dict is not None else {}


def _tensor(d: Mapping[str, Any], name: str | None) -> str:
    at = d.get("alloc_site")
    if name and at:
        return f"`{name}` (allocated at {at})"
    if name:
        return f"`{name}`"
    if at:
        return f"the tensor allocated at {at}"
    return "the tensor"


def _wait(waiter: str, waited: str) -> str:
    """``make A wait for B (`A.wait_stream(B)`)``; the call only when both names are
    Python names (a CUDA stream is "cuda:0 stream 0x3")."""
    if waiter.isidentifier() and waited.isidentifier():
        return f"make {waiter} wait for {waited} (`{waiter}.wait_stream({waited})`)"
    return f"make {waiter} wait for {waited} (wait_stream or an event)"


def fix_for(hazard: Any) -> str | None:
    """The fix of ``hazard`` with its real names, or None (the kind's hint applies)."""
    try:
        d = _as_dict(hazard)
        return _fix(d)
    except Exception:  # a report never fails for its fix line
        return None


def _fix(d: Mapping[str, Any]) -> str | None:
    kind = d.get("kind")
    use_s = d.get("use_stream_name")
    alloc_s = d.get("alloc_stream_name")
    other_s = d.get("other_stream_name")
    name = tensor_name(d)
    if kind in ("unsynced-free", "reuse-race"):
        if not use_s:
            return None
        at = d.get("alloc_site")
        arg = use_s if use_s.isidentifier() else "s"
        if name:
            call = f"`{name}.record_stream({arg})`" + (f" (allocated at {at})" if at else "")
        else:
            call = f"record_stream({arg}) on {_tensor(d, None)}"
        if arg != use_s:
            call += f", s being {use_s},"
        where = f" before the free at {d['free_site']}" if d.get("free_site") else ""
        text = (
            f"call {call}{where}, for its use on {use_s}"
            f"{' at ' + d['use_site'] if d.get('use_site') else ''}"
        )
        if alloc_s:
            text += f"; or {_wait(alloc_s, use_s)} before its next allocation"
        if kind == "reuse-race":
            text = "fix the free that let the block go: " + text
        return text + "."
    if kind == "unwaited-allocation":
        if not use_s or not alloc_s:
            return None
        where = f" at {d['use_site']}" if d.get("use_site") else ""
        return f"{_wait(use_s, alloc_s)} before {_tensor(d, name)} is first used on it{where}."
    if kind == "unsynced-access":
        if not use_s or not other_s:
            return None
        first = f" at {d['other_site']}" if d.get("other_site") else ""
        second = f" at {d['use_site']}" if d.get("use_site") else ""
        return f"{_wait(use_s, other_s)} after the access{first} and before the access{second}."
    if kind in ("host-read-before-copy", "host-write-during-copy"):
        if not use_s:
            return None
        what = "reading" if kind == "host-read-before-copy" else "writing"
        where = f" at {d['other_site']}" if d.get("other_site") else ""
        copy = f" (the copy at {d['use_site']})" if d.get("use_site") else ""
        return (
            f"synchronize {use_s} (or an event recorded on it after the copy{copy}) before "
            f"{what} the host tensor{where}."
        )
    if kind == "redundant-record-stream":
        site = d.get("use_site")
        if not site:
            return None
        m = _RECORD.search(_source(site))
        call = f"`{m.group(1)}.record_stream(...)`" if m else "the record_stream call"
        on = f" for {use_s}" if use_s else ""
        return f"drop {call} at {site}{on}: each time it ran it was not needed."
    return None
