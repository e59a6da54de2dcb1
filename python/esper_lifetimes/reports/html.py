"""The HTML report: one self-contained page; its HTML, CSS and JavaScript are the
files in ``assets/``."""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import IO, Any

from esper_lifetimes.reports._common import (
    KINDS,
    Sources,
    counted,
    hex_addr,
    jsonable,
    kind_info,
    kind_order,
    roles_of,
    size_text,
    streams_of,
    summary_of,
    write_file,
)
from esper_lifetimes.reports.analysis import Analysis, analysis_for
from esper_lifetimes.reports.timeline import Timeline

# --------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------

_MARK_CODES = {
    "read": 0,
    "write": 1,
    "copy_to_host": 2,
    "copy_from_host": 3,
    "record_stream": 4,
    "event_record": 5,
    "host_read": 6,
    "host_write": 7,
    "stream_query": 8,
    "event_query": 8,
    "event_wait": 9,
    "wait_stream": 9,
    "stream_synchronize": 10,
    "event_synchronize": 10,
    "device_synchronize": 11,
}
_LINK_CODES = {"wait_stream": 0, "event_wait": 1, "synchronize": 2, "device_synchronize": 3}
_NO_COLUMN = ("define_stream", "forget_event", "host_release")


def _html_data(
    a: Analysis,
    hs: list[dict[str, Any]],
    src: Sources,
    title: str,
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    sites: list[str] = []
    site_ix: dict[str, int] = {}

    def si(site: str | None) -> int:
        if site is None:
            return -1
        i = site_ix.get(site)
        if i is None:
            i = site_ix[site] = len(sites)
            sites.append(site)
        return i

    cols: list[int] = []
    col = 0
    for _t, op, _args in a.timeline._events:
        cols.append(col)
        if op not in _NO_COLUMN:
            col += 1
    ncols = max(col, 1)

    def c(seq: int | None) -> int:
        if seq is None:
            return -1
        return cols[seq] if 0 <= seq < len(cols) else ncols - 1

    lanes = sorted(a.streams.values(), key=lambda s: s.lane)
    lane_of = {s.handle: i for i, s in enumerate(lanes)}
    host = len(lanes)

    def lane(stream: int | None) -> int:
        return host if stream is None else lane_of.get(stream, host)

    storages = [
        [
            lane(st.stream),
            st.row,
            c(st.alloc_seq),
            c(st.free_seq),
            hex_addr(st.ptr),
            st.nbytes,
            si(st.alloc_site),
            si(st.free_site),
            len(st.uses),
            sorted({lane(u[1]) for u in st.uses}),
            sorted({lane(r[1]) for r in st.records}),
            st.hazards,
        ]
        for st in a.storages
    ]
    marks = []
    for seq, what, stream, info in a.marks:
        ref = info.get("storage")
        if what in ("wait_stream",):
            ref = lane(info["waited"])
        elif what in ("stream_synchronize", "stream_query"):
            ref = lane(info["stream"])
        elif ref is None:
            ref = -1
        marks.append([c(seq), lane(stream), _MARK_CODES[what], si(info.get("site")), ref])
    links = [
        [
            _LINK_CODES[what],
            -1 if what == "device_synchronize" else lane(s),
            c(s_seq),
            lane(d),
            c(d_seq),
        ]
        for what, s, s_seq, d, d_seq in a.links
    ]
    hazards = []
    for h, d in zip(a.hazards, hs, strict=True):
        hazards.append(
            {
                "id": h.index,
                "kind": d["kind"],
                "severity": d["severity"],
                "count": d["count"],
                "live": d["live"],
                "message": d["message"],
                "opened": c(h.opened_seq),
                "occ": sorted({c(s) for s in h.occurrences}),
                "paths": [
                    [
                        [x["role"], lane(x["stream"]), c(x["seq"]), x["storage"], si(x["site"])]
                        for x in p
                    ]
                    for p in h.paths
                ],
                "roles": [[r, si(s), st] for r, s, st in roles_of(d)],
            }
        )
    code = {}
    for i, site in enumerate(sites):
        text = src.line(site)
        if text:
            code[i] = text
    wall = a.has_wall_clock()
    times = [t for t, _, _ in a.timeline._events] if wall else None
    col_times = None
    if times:
        t0 = times[0]
        col_times = [0.0] * ncols
        for seq, cc in enumerate(cols):
            col_times[min(cc, ncols - 1)] = round((times[seq] - t0) / 1000, 1)
    return {
        "title": title,
        "meta": jsonable(dict(meta)),
        "events": len(a.timeline),
        "dropped": a.timeline.dropped,
        "cols": ncols,
        "colTimes": col_times,
        "lanes": [
            {"name": s.name, "handle": hex_addr(s.handle), "virtual": s.virtual, "rows": s.rows}
            for s in lanes
        ]
        + [{"name": "host", "handle": None, "virtual": False, "rows": 0, "host": True}],
        "storages": storages,
        "marks": marks,
        "links": links,
        "hazards": hazards,
        "sites": sites,
        "code": code,
        "kinds": {
            k: {"color": v.color, "title": v.title, "hint": v.hint} for k, v in KINDS.items()
        },
    }


def html_report(
    timeline: Timeline | Analysis,
    hazards: Iterable[Any] | None = None,
    *,
    title: str | None = None,
    meta: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
    read_sources: bool = True,
) -> str:
    """The HTML report as a string: one self-contained page (inline CSS, JS and SVG)."""
    a = analysis_for(timeline, hazards)
    assert a is not None
    hs = [h.fields for h in a.hazards]
    src = Sources(sources, read_sources)
    all_meta = dict(a.timeline.meta)
    all_meta.update(meta or {})
    title = title or "esper-lifetimes report"
    data = _html_data(a, hs, src, title, all_meta)
    blob = json.dumps(data, separators=(",", ":"))
    blob = blob.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    summary = summary_of(hs)
    return (
        _asset("report.html")
        .replace("%%TITLE%%", html.escape(title))
        .replace("%%SUMMARY%%", _html_summary(summary, a, all_meta))
        .replace("%%HAZARDS%%", _html_hazards(a, hs, src))
        .replace("%%CSS%%", _asset("report.css"))
        .replace("%%JS%%", _asset("report.js"))
        .replace("%%DATA%%", blob)
    )


def _html_summary(summary: dict[str, Any], a: Analysis, meta: Mapping[str, Any]) -> str:
    e = html.escape
    parts = []
    for kind, info in summary["kinds"].items():
        color = kind_info(kind).color
        parts.append(
            f'<span class="chip" style="--k:{color}"><b>{e(kind)}</b> '
            f"{info['distinct']}&thinsp;/&thinsp;&times;{info['occurrences']}</span>"
        )
    if not parts:
        parts.append('<span class="chip ok"><b>no hazards</b></span>')
    facts = [
        counted(len(a.timeline), "event"),
        counted(len(a.streams), "stream"),
        counted(len(a.storages), "storage"),
    ]
    if a.timeline.dropped:
        facts.append(f"{a.timeline.dropped} events not recorded")
    if a.rejected:
        facts.append(f"{len(a.rejected)} events rejected by the engine")
    origin = meta.get("trace") or meta.get("program") or meta.get("command")
    desc = meta.get("description")
    trace_meta = meta.get("trace_metadata")
    if not desc and isinstance(trace_meta, Mapping):
        desc = trace_meta.get("description")
    head = (
        f"{summary['errors']} error{'s' if summary['errors'] != 1 else ''}, "
        f"{summary['advice']} advice"
    )
    out = f'<div class="facts"><b>{e(head)}</b> &middot; {e(", ".join(facts))}'
    if origin:
        out += f" &middot; <code>{e(str(origin))}</code>"
    out += "</div>"
    if desc:
        out += f'<div class="desc">{e(str(desc))}</div>'
    return out + '<div class="chips">' + "".join(parts) + "</div>"


def _html_hazards(a: Analysis, hs: list[dict[str, Any]], src: Sources) -> str:
    e = html.escape
    if not hs:
        return '<p class="none">No hazards found: every free, reuse and access was ordered.</p>'
    out = []
    pairs = sorted(zip(a.hazards, hs, strict=True), key=lambda p: kind_order(p[1]["kind"]))
    for h, d in pairs:
        color = kind_info(d["kind"]).color
        badges = [f'<span class="sev {e(d["severity"])}">{e(d["severity"])}</span>']
        if d["count"] > 1:
            badges.append(f'<span class="count">&times;{d["count"]}</span>')
        if d["live"]:
            badges.append(
                '<span class="live" title="the use was known to be in flight">live</span>'
            )
        if h.opened_seq is None:
            badges.append('<span class="unplaced">not on the timeline</span>')
        rows = []
        for role, site, stream in roles_of(d):
            code = src.line(site)
            rows.append(
                "<tr>"
                f'<th>{e(role)}</th><td class="site">{e(site or "?")}</td>'
                f'<td class="on">{e(stream or "")}</td>'
                f'<td class="code">{e(code) if code else ""}</td>'
                "</tr>"
            )
        where = "host memory" if d["kind"].startswith("host-") else "storage"
        out.append(
            f'<div class="hz" id="hz{h.index}" data-hazard="{h.index}" '
            f'data-kind="{e(d["kind"])}" style="--k:{color}">'
            f'<div class="hzhead"><span class="num">{h.index}</span>'
            f'<span class="kind">{e(d["kind"])}</span>{"".join(badges)}'
            f'<span class="what">{where} <code>{e(hex_addr(d["ptr"]) or "?")}</code> '
            f"({e(size_text(d['nbytes']))}) &middot; {e(', '.join(streams_of(d)))}</span></div>"
            f'<table class="roles">{"".join(rows)}</table>'
            f'<div class="msg">{e(d["message"])}</div>'
            f'<div class="hint">{e(kind_info(d["kind"]).hint)}</div>'
            "</div>"
        )
    return "".join(out)


def write_html(
    path: str | os.PathLike | IO[str],
    timeline: Timeline | Analysis,
    hazards: Iterable[Any] | None = None,
    **kwargs: Any,
) -> None:
    """Write :func:`html_report` to ``path``."""
    write_file(path, html_report(timeline, hazards, **kwargs))


def _asset(name: str) -> str:
    """A file of the page (``reports/assets/``), read once."""
    text = _ASSETS.get(name)
    if text is None:
        path = resources.files("esper_lifetimes.reports").joinpath("assets", name)
        text = _ASSETS[name] = path.read_text(encoding="utf-8")
    return text


_ASSETS: dict[str, str] = {}
