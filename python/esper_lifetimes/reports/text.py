"""The text report."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterable, Mapping
from typing import IO, Any

from esper_lifetimes.reports._common import (
    KINDS,
    _grouped,
    _hex,
    _kind_info,
    _plural,
    _roles,
    _size,
    _Sources,
    _streams_of,
    _summary,
    hazard_dict,
)
from esper_lifetimes.reports.analysis import Analysis
from esper_lifetimes.reports.timeline import Timeline

# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def write_text(
    hazards: Iterable[Any],
    file: IO[str] | None = None,
    *,
    timeline: Timeline | Analysis | None = None,
    sources: Mapping[str, str] | None = None,
    read_sources: bool = True,
    width: int = 100,
) -> None:
    """The human-readable report on ``file`` (stderr by default): hazards grouped by kind,
    errors first, each with its count, streams, storage and source lines.

    ``sources`` maps file names to their text, for source lines of sites ``file:line``;
    files that exist are read too unless ``read_sources`` is False.
    """
    out = sys.stderr if file is None else file
    hs = [hazard_dict(h) for h in hazards]
    src = _Sources(sources, read_sources)
    summary = _summary(hs)
    analysis = timeline if isinstance(timeline, Analysis) else None
    if isinstance(timeline, Timeline):
        tl: Timeline | None = timeline
    else:
        tl = analysis.timeline if analysis is not None else None
    if tl is not None:
        facts = [_plural(len(tl), "event")]
        if analysis is not None:
            facts.append(_plural(len(analysis.streams), "stream"))
            facts.append(_plural(len(analysis.storages), "storage"))
        if tl.truncated:
            facts.append(f"{tl.dropped} more not recorded")
        origin = tl.meta.get("trace")
        out.write(f"esper-lifetimes: {', '.join(facts)}{' from ' + origin if origin else ''}\n")
    if not hs:
        out.write("esper-lifetimes: no hazards found.\n")
        return
    out.write(
        f"esper-lifetimes: {_plural(summary['distinct'], 'distinct hazard')} "
        f"({_plural(summary['occurrences'], 'occurrence')}): "
        f"{_plural(summary['errors'], 'error')}, {summary['advice']} advice\n"
    )
    wrap = textwrap.TextWrapper(width=width, initial_indent="      ", subsequent_indent="      ")
    for kind, idx in _grouped(hs).items():
        info = summary["kinds"][kind]
        out.write(
            f"\n{kind} ({info['severity']}): {_plural(info['distinct'], 'distinct hazard')}, "
            f"{_plural(info['occurrences'], 'occurrence')}"
        )
        title = _kind_info(kind).title if kind in KINDS else ""
        out.write(f" -- {title}\n" if title else "\n")
        for i in idx:
            h = hs[i]
            streams = ", ".join(_streams_of(h))
            where = f"storage {_hex(h['ptr'])} ({_size(h['nbytes'])})"
            if kind.startswith("host-"):
                where = f"host memory {_hex(h['ptr'])} ({_size(h['nbytes'])})"
            live = "  [live: the use was still in flight]" if h["live"] else ""
            out.write(f"  #{i + 1}  x{h['count']}  {where}; streams: {streams}{live}\n")
            roles = _roles(h)
            rw = max(len(r[0]) for r in roles)
            sw = max(len(r[1] or "?") for r in roles)
            for role, site, stream in roles:
                on = f"on {stream}" if stream else ""
                line = f"      {role:<{rw}}  {site or '?':<{sw}}  {on}"
                code = src.line(site)
                if code:
                    line = f"{line:<{6 + rw + 2 + sw + 2 + 16}}| {code}"
                out.write(line.rstrip() + "\n")
            out.write("\n".join(wrap.wrap(h["message"])) + "\n")
        hint = _kind_info(kind).hint
        if hint:
            out.write(
                "\n".join(
                    textwrap.wrap(
                        "fix: " + hint,
                        width=width,
                        initial_indent="  ",
                        subsequent_indent="       ",
                    )
                )
                + "\n"
            )
