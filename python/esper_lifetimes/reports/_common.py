"""What every report format shares: hazards as plain dicts, kinds, labels, source lines."""

from __future__ import annotations

import json
import linecache
import os
from collections.abc import Mapping, Sequence
from typing import IO, Any

from esper_lifetimes import vocab
from esper_lifetimes.sites import parse_site

# The kinds (name, severity, title, hint, roles, colour): esper_lifetimes.vocab.
KindInfo = vocab.KindInfo
KINDS: dict[str, KindInfo] = {k.name: k for k in vocab.kinds()}
KIND_ORDER = tuple(KINDS)
_OTHER_KIND = KindInfo("?", "error", "hazard", "", (), vocab.OTHER_COLOR)


def kind_info(kind: str) -> KindInfo:
    return KINDS.get(kind, _OTHER_KIND)


kind_order = vocab.kind_order


# --------------------------------------------------------------------------------------
# Hazards as plain dicts
# --------------------------------------------------------------------------------------

_HAZARD_FIELDS = vocab.HAZARD_FIELDS


def hazard_dict(hazard: Any) -> dict[str, Any]:
    """A Hazard (or a dict of its fields, e.g. from ``Hazard.to_dict()``) as a plain dict."""
    if isinstance(hazard, Mapping):
        src = hazard
        d = {name: src.get(name) for name in _HAZARD_FIELDS}
    else:
        d = {name: getattr(hazard, name, None) for name in _HAZARD_FIELDS}
    if d["severity"] is None:
        info = vocab.kind(d["kind"])
        d["severity"] = info.severity if info is not None else "error"
    if d["count"] is None:
        d["count"] = 1
    if d["message"] is None:
        d["message"] = str(d["kind"])
    return d


hazard_key = vocab.dedup_key


def stream_label(handle: int) -> str:
    return f"stream {handle & 0xFFFFFFFFFFFFFFFF:#x}"


def hex_addr(value: int | None) -> str | None:
    return None if value is None else f"{value & 0xFFFFFFFFFFFFFFFF:#x}"


def size_text(nbytes: int | None) -> str:
    if nbytes is None:
        return "?"
    if nbytes < 1024:
        return f"{nbytes} B"
    value = float(nbytes)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            return f"{value:.3g} {unit}"
    return f"{nbytes} B"  # unreachable


def roles_of(h: Mapping[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """The (role, site, stream name) lines a report shows for a hazard, in story order:
    the kind's roles (``vocab``, from the engine's ``Kind``); lines with neither a site
    nor a stream are left out."""
    info = vocab.kind(h["kind"])
    roles = info.roles if info is not None else _OTHER_ROLES
    rows = [
        (label, h.get(site), h.get(stream) if stream else None) for label, site, stream in roles
    ]
    return [r for r in rows if r[1] is not None or r[2] is not None]


_OTHER_ROLES = (
    ("allocated", "alloc_site", "alloc_stream_name"),
    ("used", "use_site", "use_stream_name"),
    ("freed", "free_site", None),
    ("other", "other_site", "other_stream_name"),
)


def streams_of(h: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    for name in (h["alloc_stream_name"], h["use_stream_name"], h["other_stream_name"]):
        if name is not None and name not in out:
            out.append(name)
    return out


class Sources:
    """Source lines of sites ``file:line``: from given texts, else from readable files."""

    def __init__(self, sources: Mapping[str, str] | None, read_files: bool):
        self._texts: dict[str, list[str]] = {}
        for name, text in (sources or {}).items():
            self._texts[name] = text.splitlines()
            self._texts.setdefault(os.path.basename(name), self._texts[name])
        self._read_files = read_files
        self._cache: dict[str, str | None] = {}

    def line(self, site: str | None) -> str | None:
        if site is None:
            return None
        if site in self._cache:
            return self._cache[site]
        text = None
        parsed = parse_site(site)
        if parsed:
            path, lineno = parsed
            lines = self._texts.get(path) or self._texts.get(os.path.basename(path))
            if lines is not None:
                if 1 <= lineno <= len(lines):
                    text = lines[lineno - 1]
            elif self._read_files:
                text = _read_line(path, lineno)
        text = text.strip() if text else None
        self._cache[site] = text or None
        return self._cache[site]


def grouped(hazards: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """kind -> indexes into ``hazards``, kinds in report order."""
    groups: dict[str, list[int]] = {}
    for i, h in enumerate(hazards):
        groups.setdefault(h["kind"], []).append(i)
    return {k: groups[k] for k in sorted(groups, key=kind_order)}


def summary_of(hazards: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    kinds: dict[str, dict[str, Any]] = {}
    for kind, idx in grouped(hazards).items():
        kinds[kind] = {
            "severity": hazards[idx[0]]["severity"],
            "distinct": len(idx),
            "occurrences": sum(hazards[i]["count"] for i in idx),
        }
    errors = sum(1 for h in hazards if h["severity"] == "error")
    return {
        "distinct": len(hazards),
        "occurrences": sum(h["count"] for h in hazards),
        "errors": errors,
        "advice": len(hazards) - errors,
        "kinds": kinds,
    }


def counted(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def generator_info() -> str:
    try:
        from esper_lifetimes import __version__

        return f"esper-lifetimes {__version__}"
    except ImportError:  # pragma: no cover
        return "esper-lifetimes"


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def write_file(path: str | os.PathLike | IO[str], text: str) -> None:
    if hasattr(path, "write"):
        path.write(text)  # type: ignore[union-attr]
        return
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)


def _read_line(path: str, lineno: int) -> str | None:
    """Line ``lineno`` of the file at ``path`` (relative to the working directory, as
    sites are), or None."""
    for p in (path, os.path.abspath(path)):
        if os.path.isfile(p):
            return linecache.getline(p, lineno) or None
    return None
