"""The one text renderer: the full report (the CLI, ``report.txt``) and its compact
form (:func:`format_report`: ``Tracker.report()``, ``LifetimeHazardError``, pytest
failures). Both take the roles of each kind from the vocabulary, the source lines from
the same reader, and show the fix."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

from esper_lifetimes import vocab
from esper_lifetimes.reports._common import (
    KINDS,
    Sources,
    counted,
    grouped,
    hazard_dict,
    hex_addr,
    kind_info,
    roles_of,
    size_text,
    streams_of,
    summary_of,
)
from esper_lifetimes.reports.analysis import Analysis
from esper_lifetimes.reports.timeline import Timeline

FixFor = Callable[[Any], "str | None"]
"""``fix_for(hazard)``: the fix of one hazard naming the real tensor and stream (the
tracker knows them), or None for the kind's general hint."""


def _fix(hazard: Any, d: Mapping[str, Any], fix_for: FixFor | None = None) -> str:
    """The fix line of one hazard: its own (naming the real tensor and stream, when the
    tracker knows them: ``fix_for(hazard)``, or a ``fix`` attribute or key), else its
    kind's hint."""
    own = fix_for(hazard) if fix_for is not None else None
    if not own:
        own = hazard.get("fix") if isinstance(hazard, Mapping) else getattr(hazard, "fix", None)
    if own:
        return str(own)
    return kind_info(d["kind"]).hint


def _compact_lines(hazard: Any, src: Sources, fix_for: FixFor | None) -> list[str]:
    d = hazard_dict(hazard)
    head = f"{str(d['severity']).upper()} {d['kind']}"
    if d["count"] > 1:
        head += f" (x{d['count']})"
    if d["live"]:
        head += " [live: the racing work was still in flight]"
    lines = [head, f"  {d['message']}"]
    info = vocab.kind(d["kind"])
    for label, site_field, stream_field in info.roles if info else ():
        site = d.get(site_field)
        if site is None:
            if site_field == "alloc_site":
                where = "(not seen: allocated before tracking began)"
            elif site_field == "use_site":
                where = "(unknown)"
            else:
                continue
        else:
            where = site
        stream = d.get(stream_field) if stream_field else None
        on = f" on {stream}" if stream else ""
        code = src.line(site)
        lines.append(f"  {label + on + ':':<28} {where}" + (f"    {code}" if code else ""))
    fix = _fix(hazard, d, fix_for)
    if fix:
        lines.append(f"  fix: {fix}")
    return lines


def format_report(
    hazards: Iterable[Any],
    diagnostics: int = 0,
    *,
    sources: Mapping[str, str] | None = None,
    read_sources: bool = True,
    fix_for: FixFor | None = None,
) -> str:
    """The compact report (exception messages, pytest failures, ``Tracker.report()``):
    errors first, then advice; for each hazard its message, its sites with their source
    lines, and the fix (``fix_for``: see :data:`FixFor`). ``diagnostics``: the tracker's
    count of internal failures."""
    hs = list(hazards)
    src = Sources(sources, read_sources)
    errors = [h for h in hs if hazard_dict(h)["severity"] == "error"]
    advice = [h for h in hs if hazard_dict(h)["severity"] != "error"]
    out = [f"esper-lifetimes: {counted(len(errors), 'error')}, {len(advice)} advice"]
    for h in errors + advice:
        out.append("")
        out.extend(_compact_lines(h, src, fix_for))
    if diagnostics:
        out.append("")
        out.append(f"({diagnostics} internal diagnostic(s): see Tracker.diagnostics)")
    return "\n".join(out)


def write_text(
    hazards: Iterable[Any],
    file: IO[str] | None = None,
    *,
    timeline: Timeline | Analysis | None = None,
    sources: Mapping[str, str] | None = None,
    read_sources: bool = True,
    width: int = 100,
    fix_for: FixFor | None = None,
) -> None:
    """The human-readable report on ``file`` (stderr by default): hazards grouped by kind,
    errors first, each with its count, streams, storage and source lines.

    ``sources`` maps file names to their text, for source lines of sites ``file:line``;
    files that exist are read too unless ``read_sources`` is False. ``fix_for``: a
    hazard's own fix (:data:`FixFor`), shown under it when it says more than the hint.
    """
    out = sys.stderr if file is None else file
    hazards_in = list(hazards)
    hs = [hazard_dict(h) for h in hazards_in]
    src = Sources(sources, read_sources)
    summary = summary_of(hs)
    analysis = timeline if isinstance(timeline, Analysis) else None
    if isinstance(timeline, Timeline):
        tl: Timeline | None = timeline
    else:
        tl = analysis.timeline if analysis is not None else None
    if tl is not None:
        facts = [counted(len(tl), "event")]
        if analysis is not None:
            facts.append(counted(len(analysis.streams), "stream"))
            facts.append(counted(len(analysis.storages), "storage"))
        if tl.truncated:
            facts.append(f"{tl.dropped} more not recorded")
        origin = tl.meta.get("trace")
        out.write(f"esper-lifetimes: {', '.join(facts)}{' from ' + origin if origin else ''}\n")
    if not hs:
        out.write("esper-lifetimes: no hazards found.\n")
        return
    out.write(
        f"esper-lifetimes: {counted(summary['distinct'], 'distinct hazard')} "
        f"({counted(summary['occurrences'], 'occurrence')}): "
        f"{counted(summary['errors'], 'error')}, {summary['advice']} advice\n"
    )
    wrap = textwrap.TextWrapper(width=width, initial_indent="      ", subsequent_indent="      ")
    for kind, idx in grouped(hs).items():
        info = summary["kinds"][kind]
        out.write(
            f"\n{kind} ({info['severity']}): {counted(info['distinct'], 'distinct hazard')}, "
            f"{counted(info['occurrences'], 'occurrence')}"
        )
        title = kind_info(kind).title if kind in KINDS else ""
        out.write(f" -- {title}\n" if title else "\n")
        for i in idx:
            h = hs[i]
            streams = ", ".join(streams_of(h))
            where = f"storage {hex_addr(h['ptr'])} ({size_text(h['nbytes'])})"
            if kind.startswith("host-"):
                where = f"host memory {hex_addr(h['ptr'])} ({size_text(h['nbytes'])})"
            live = "  [live: the use was still in flight]" if h["live"] else ""
            out.write(f"  #{i + 1}  x{h['count']}  {where}; streams: {streams}{live}\n")
            roles = roles_of(h)
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
            own = hazards_in[i] if i < len(hazards_in) else None
            own_fix = _fix(own, h, fix_for) if own is not None else ""
            if own_fix and own_fix != kind_info(kind).hint:
                out.write("\n".join(wrap.wrap("fix: " + own_fix)) + "\n")
        hint = kind_info(kind).hint
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
